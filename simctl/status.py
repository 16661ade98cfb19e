"""simctl status: the engine at a glance (due users, lag, queue, runs, failures, ticks)."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import typer

from engine.text import printable
from simctl.common import out, print_json, run_async, settings
from simctl.fmt import plain, utc


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    watch: Annotated[
        float | None, typer.Option("--watch", min=0.5, help="Refresh every N seconds until Ctrl-C.")
    ] = None,
) -> None:
    """Due users, oldest lag, users backing off after a failed run (not due, and not lag,
    until their backoff ends), queue depth, runs and failures in the last minute and hour,
    auto-pauses, whether claims are paused (`simctl claims`), and the last market tick per
    asset. Then what grows and what runs out: each table the engine writes (size with indexes,
    growth per day from the scheduler's samples, estimated rows), each `integer` id (ids and
    days left; a warning under 90 days), dead row versions on users and its last autovacuum,
    the retention window, and the latest verified checkpoint's age (and any that failed after
    it). Warnings say what to act on. Last, the schedulers, workers and consoles seen recently
    (each beats every 5 s; "GONE" when not seen for 30 s: killed, or its host lost; a clean stop
    removes its row, and a scheduler forgets a gone one after a day).

    Queue depth counts the jobs really waiting: taken by no worker (a killed worker's jobs are
    not) and enqueued within the last SIM_LEASE_S (a lapsed job's slots are claimed again).
    Runs in the last minute/hour are the span of run ids in that time (ids of rolled-back
    batches included); sizes and rows come from the catalogue, never a count, so status costs
    the same at any history size.

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
        from store.growth import as_json, overview
        from store.processes import seen
        from store.runs import deployment_id
        from store.status import status as read_status
        from workers.enqueue import is_redis_misconfigured, redis_error
        from workers.queue import pending_jobs

        async with connection(s.database_url) as conn:
            data = await read_status(conn)
            interval_s = s.sim_checkpoint_interval_s or None  # 0: the scheduler takes none
            data.update(as_json(await overview(conn, checkpoint_interval_s=interval_s)))
            data["processes"] = await seen(conn)
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
    from rich.text import Text

    table = Table(title="simengine status", show_header=False)

    def row(key: str, value: str) -> None:
        # Table names come from the catalogue and errors from the database: shown as text,
        # escaped, never read as rich markup.
        table.add_row(Text(printable(key)), Text(printable(value)))

    data = dict(data)
    ticks = data.pop("last_tick", {}) or {}
    procs = data.pop("processes", None) or []
    growth = {k: data.pop(k, None) for k in _GROWTH_KEYS}
    for key, value in data.items():
        shown = plain(value) if isinstance(value, Decimal) else str(value)
        row(key.replace("_", " "), "-" if value is None else shown)
    for asset, at in sorted(ticks.items()):
        row(f"last tick {asset}", str(at))
    if not procs:
        row("processes", "none seen (no scheduler or worker running?)")
    for p in procs:
        state = "GONE, last seen" if p["gone"] else "seen"
        row(
            f"{p['kind']} {p['host']} pid {p['pid']}",
            f"{state} {p['seen_s_ago']} s ago, started {utc(p['started_at'])}"
            + (f", {p['version']}" if p["version"] else ""),
        )
    for key, value in growth_lines(growth):
        row(key, value)
    return table


_GROWTH_KEYS = ("tables", "id_headroom", "users_vacuum", "history", "warnings")
# Tables shown one per line whatever their size (the rest: those over 1 MB, then one line).
_ALWAYS = ("sim_runs", "trades", "transactions", "price_history", "users")
_MB = 1 << 20


def growth_lines(g: dict[str, Any]) -> list[tuple[str, str]]:
    """The growth part of `simctl status` as (label, text) lines."""
    lines: list[tuple[str, str]] = []
    tables: dict[str, dict[str, Any]] = g.get("tables") or {}
    shown = sorted(
        (name for name, t in tables.items() if name in _ALWAYS or t["bytes"] >= _MB),
        key=lambda name: -tables[name]["bytes"],
    )
    for name in shown:
        t = tables[name]
        if t["bytes_per_day"] is None:
            rate = "n/a per day"  # fewer than two samples a minute apart
        else:
            rate = f"{_signed_bytes(t['bytes_per_day'])}/day (over {_hours(t['rate_over_s'])})"
        rows = "rows n/a" if t["est_rows"] is None else f"~{t['est_rows']:,} rows"
        lines.append((f"table {name}", f"{_bytes(t['bytes'])}, {rate}, {rows}"))
    rest = [t["bytes"] for name, t in tables.items() if name not in shown]
    if rest:
        lines.append(("other tables", f"{len(rest)}, {_bytes(sum(rest))} in all"))
    for i in g.get("id_headroom") or []:
        if i["days_left"] is not None:
            days = f"{i['days_left']:,.1f} days at {i['ids_per_day']:,.0f}/day"
        elif i["ids_per_day"] is not None:
            days = "not growing"
        else:
            days = "days left n/a"  # no sample a minute old yet
        flag = "  WARNING" if i["warning"] else ""
        lines.append(
            (
                f"id {i['table']}.{i['column']} ({i['type']})",
                f"{i['ids_left']:,} of {i['max']:,} left, {days}{flag}",
            )
        )
    u = g.get("users_vacuum")
    if u is not None:
        last = u["last_autovacuum"] or u["last_vacuum"]
        when = "never vacuumed" if last is None else f"last vacuum {utc(last)} UTC"
        auto = "" if u["autovacuum_on"] else ", autovacuum OFF"
        lines.append(
            (
                "users dead tuples",
                f"{u['dead_tuples']:,} (autovacuum from {u['vacuum_at_dead']:,}; {when}; "
                f"{u['n_mod_since_analyze']:,} changed since analyze{auto})",
            )
        )
    h = g.get("history")
    if h is not None:
        if h["keep_days"] is None and h["pruned_through"] is None:
            lines.append(("retention", "off (nothing is pruned)"))
        else:
            keep = "no window set" if h["keep_days"] is None else f"keep {h['keep_days']} days"
            through = (
                "nothing pruned yet"
                if h["pruned_through"] is None
                else f"pruned through checkpoint {h['pruned_through']}"
                + (f" (cut {utc(h['pruned_cut_at'])} UTC)" if h["pruned_cut_at"] else "")
            )
            lines.append(("retention", f"{keep}, {through}"))
        if h["checkpoint_id"] is None:
            lines.append(("checkpoint", "none verified yet"))
        else:
            lines.append(
                (
                    "checkpoint",
                    f"{h['checkpoint_id']} verified, cut {_hours(h['checkpoint_age_s'])} ago "
                    f"({utc(h['checkpoint_cut_at'])} UTC)",
                )
            )
        if h["failed_id"] is not None:
            lines.append(
                (
                    "checkpoint failed",
                    f"{h['failed_id']} at {utc(h['failed_at'])} UTC: {h['failed_error'] or '-'}",
                )
            )
        if h["building_id"] is not None:
            lines.append(
                ("checkpoint building", f"{h['building_id']} since {utc(h['building_since'])} UTC")
            )
        if h["run_days_through"] is not None:
            lines.append(
                (
                    "run partitions",
                    f"{h['run_days']} days, through {utc(h['run_days_through'])} UTC "
                    f"({h['run_days_ahead']:.1f} days ahead)",
                )
            )
    for warning in g.get("warnings") or []:
        lines.append(("WARNING", warning))
    return lines


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _signed_bytes(n: int) -> str:
    return ("+" if n >= 0 else "\u2212") + _bytes(abs(n))


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
