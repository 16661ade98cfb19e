"""simctl scheduler and simctl worker: the engine's long-running processes."""

from __future__ import annotations

from typing import Annotated

import typer

from simctl.common import run_async, settings


def scheduler(
    once: Annotated[bool, typer.Option("--once", help="Do one pass and exit.")] = False,
) -> None:
    """Lease due users and enqueue their slots on Redis (runs until SIGTERM/SIGINT).

    Several schedulers at once are safe: claims use FOR UPDATE SKIP LOCKED and a lease in Postgres.
    Waits out Postgres and Redis outages, at start too (postgres.unavailable, redis.unavailable);
    exits 2 at start only for configuration (credentials, database, schema, privileges, a busy
    SIM_METRICS_PORT). --once does not wait: exit 2 with one line if either is away.

    Example:

    \b
      simctl scheduler --once
    """
    s = settings()

    async def go() -> None:
        from workers.logs import configure_logging
        from workers.scheduler import run_scheduler

        configure_logging(s)
        await run_scheduler(s, once)

    run_async(go)


def worker(
    burst: Annotated[bool, typer.Option("--burst", help="Exit when the queue is empty.")] = False,
) -> None:
    """Run an arq worker that applies batches of runs (graceful stop on SIGTERM).

    Waits out Postgres and Redis outages, at start too, and comes back with them; exits 2 at
    start only for configuration. --burst does not wait: exit 2 with one line if either is away.

    Example:

    \b
      simctl worker --burst
    """
    s = settings()
    from workers.logs import configure_logging
    from workers.process import run_worker

    configure_logging(s)
    try:
        run_worker(s, burst=burst)
    except Exception as exc:
        from simctl.app import exit_for

        mapped = exit_for(exc)
        if mapped is None:
            raise
        raise mapped from None
