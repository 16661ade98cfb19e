"""simctl status: the engine at a glance (due users, lag, queue, runs, failures, ticks)."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import typer

from simctl.common import out, print_json, run_async, settings
from simctl.fmt import plain


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    watch: Annotated[
        float | None, typer.Option("--watch", min=0.5, help="Refresh every N seconds until Ctrl-C.")
    ] = None,
) -> None:
    """Due users, oldest lag, users backing off after a failed run (not due, and not lag,
    until their backoff ends), queue depth, runs and failures in the last minute and hour,
    auto-pauses, whether claims are paused (`simctl claims`), and the last market tick per
    asset.

    Queue depth counts the jobs really waiting: taken by no worker (a killed worker's jobs are
    not) and enqueued within the last SIM_LEASE_S (a lapsed job's slots are claimed again).

    Examples:

    \b
      simctl status --json
      simctl status --watch 2
    """
    s = settings()

    async def read() -> dict[str, Any]:
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        from store.db import connection
        from store.runs import deployment_id
        from store.status import status as read_status
        from workers.enqueue import is_redis_misconfigured, redis_error
        from workers.queue import pending_jobs

        async with connection(s.database_url) as conn:
            data = await read_status(conn)
            queue_name = s.queue_name(await deployment_id(conn))
        client = Redis.from_url(s.redis_url)
        try:
            # Jobs really waiting: a killed worker's jobs and lapsed ones are not counted.
            data["queue_depth"] = await pending_jobs(client, queue_name, s.sim_lease_s)
        except (OSError, RedisError) as exc:
            if is_redis_misconfigured(exc):  # configuration, not an outage: exit 2
                raise redis_error(s, exc) from None
            data["queue_depth"] = None
        finally:
            await client.aclose()
        return data

    if as_json:
        print_json(run_async(read))
        return
    if watch is None:
        out.print(_status_table(run_async(read)))
        return
    if not sys.stdout.isatty():
        # Into a file or a pipe: a new block per refresh, each stamped, written as it comes.
        while True:
            data = run_async(read)
            out.print(f"-- {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC", markup=False)
            out.print(_status_table(data))
            sys.stdout.flush()
            time.sleep(watch)
    from rich.live import Live

    with Live(console=out.get(), auto_refresh=False) as live:
        while True:
            live.update(_status_table(run_async(read)), refresh=True)
            time.sleep(watch)


def _status_table(data: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="simengine status", show_header=False)
    ticks = data.pop("last_tick", {}) or {}
    for key, value in data.items():
        shown = plain(value) if isinstance(value, Decimal) else str(value)
        table.add_row(key.replace("_", " "), "-" if value is None else shown)
    for asset, at in sorted(ticks.items()):
        table.add_row(f"last tick {asset}", str(at))
    return table
