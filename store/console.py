"""What the operators' console reads: the overview (recent windows, never a count of a history
table), failing users, a user's page (its rows keyset-paged) and the audit log. No function here
returns password_hash, tax_id, the market's seed or a key digest."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from store import processes
from store.bulk import UserFilter, list_users
from store.db import Conn
from store.errors import NotFound
from store.sqlfiles import query

# The largest id a keyset page starts below (bigint's maximum).
NEWEST = 2**63 - 1
# Due users are counted up to this many: a backlog shows as "≥ 10,000" (with the oldest due
# slot's lag beside it). The count reads a row per due user, with the engine writing those
# rows: 100,000 took 290 ms of a 300 ms overview at 1,000,000 users with the engine running.
DUE_CAP = 10_000


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else round(value.total_seconds(), 3)


async def overview(conn: Conn) -> dict[str, Any]:
    """The engine at a glance, at any size: status's figures (due users, oldest lag, backoff,
    last ticks) each from an index, runs and trades per second and per minute over the last hour
    estimated from ids (store/status.py counts the last hour's runs, which at a million users is
    millions of rows), lag percentiles over the newest runs, failing and auto-paused users, the
    claims switch, the latest checkpoint, and the schedulers, workers and consoles on record
    (sim_processes: a few rows; `gone` when not seen for processes.GONE_AFTER_S)."""
    from engine.assets import ASSETS

    counts = await conn.fetchrow(query("overview_counts", "console.sql"), DUE_CAP, list(ASSETS))
    recent = await conn.fetchrow(query("overview_recent", "console.sql"))
    state = await conn.fetchrow(query("overview_state", "console.sql"))
    series = await conn.fetch(query("overview_series", "console.sql"))
    assert counts is not None and recent is not None and state is not None
    data: dict[str, Any] = dict(counts.items())
    data.update(
        due_capped=data["due_now"] >= DUE_CAP,
        due_shown=f"≥ {DUE_CAP:,}" if data["due_now"] >= DUE_CAP else str(data["due_now"]),
        runs_per_s=round(recent["runs_1m"] / 60, 2),
        trades_per_s=round(recent["trades_1m"] / 60, 2),
        lag_p50_s=_seconds(recent["lag_p50"]),
        lag_p99_s=_seconds(recent["lag_p99"]),
        runs_1h=sum(r["runs"] for r in series),
        **dict(state.items()),
    )
    procs = await processes.seen(conn)
    data["processes"] = procs
    for kind in ("scheduler", "worker", "console"):
        data[f"{kind}s_seen"] = sum(1 for p in procs if p["kind"] == kind and not p["gone"])
    data["processes_gone"] = sum(1 for p in procs if p["gone"])
    data["series"] = {
        "minute": [r["minute"] for r in series],
        "runs": [r["runs"] for r in series],
        "trades": [r["trades"] for r in series],
        "lag_p99_s": [r["lag_p99_s"] for r in series],
    }
    return data


async def failing_users(
    conn: Conn, after_id: int = 0, limit: int = 50, *, paused: bool | None = None
) -> list[dict[str, Any]]:
    """Users on record as failing (and auto-paused ones): since when, the last error, the
    backoff. paused=None both, True auto-paused only, False still trying only."""
    state: Literal["failing", "auto_paused"] = "auto_paused" if paused else "failing"
    if paused is None:
        rows = await list_users(conn, UserFilter("failing"), after_id, limit)
        rows += await list_users(conn, UserFilter("auto_paused"), after_id, limit)
        return sorted(rows, key=lambda r: r["id"])[:limit]
    return await list_users(conn, UserFilter(state), after_id, limit)


Table = Literal["runs", "trades", "ledger", "withdrawals"]
_TABLE_QUERIES: dict[str, str] = {
    "runs": "user_runs",
    "trades": "user_trades",
    "ledger": "user_ledger",
    "withdrawals": "user_withdrawals",
}
TABLES: tuple[str, ...] = tuple(_TABLE_QUERIES)


async def user_page(conn: Conn, user_id: int) -> dict[str, Any]:
    """The user's row as the console shows it (P&L from sim_pnl); NotFound otherwise."""
    row = await conn.fetchrow(query("user_page", "console.sql"), user_id)
    if row is None:
        raise NotFound(f"no user with id {user_id}")
    return dict(row.items())


async def user_rows(
    conn: Conn, user_id: int, table: Table, before_id: int = NEWEST, limit: int = 20
) -> list[dict[str, Any]]:
    """A page of the user's runs, trades, ledger rows or withdrawals, newest first, before id."""
    rows = await conn.fetch(query(_TABLE_QUERIES[table], "console.sql"), user_id, before_id, limit)
    return [dict(r.items()) for r in rows]


async def audit_page(
    conn: Conn,
    before_id: int = NEWEST,
    action: str | None = None,
    user_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The audit log newest first (admin_key holds a fingerprint, never a key or its digest)."""
    rows = await conn.fetch(query("audit_page", "console.sql"), before_id, action, user_id, limit)
    return [dict(r.items()) for r in rows]


async def withdrawals_page(
    conn: Conn,
    before_id: int = NEWEST,
    status: str | None = None,
    user_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The withdrawals queue newest first, optionally of one status or user."""
    rows = await conn.fetch(
        query("withdrawals_page", "console.sql"), before_id, status, user_id, limit
    )
    return [dict(r.items()) for r in rows]


async def market_events(conn: Conn, limit: int = 50) -> list[dict[str, Any]]:
    """The market's definition, changes and imports from the audit, newest first."""
    rows = await conn.fetch(query("market_events", "console.sql"), limit)
    return [dict(r.items()) for r in rows]


async def asset_prices(
    conn: Conn, asset: str, since: datetime, max_points: int = 1500
) -> list[tuple[float, Decimal]]:
    """An asset's stored prices from `since` up to now, thinned to at most `max_points` evenly
    spaced ones (the last one kept)."""
    rows = await conn.fetch(query("asset_prices", "console.sql"), asset, since)
    if len(rows) > max_points:
        step = len(rows) / max_points
        keep = sorted({int(i * step) for i in range(max_points)} | {len(rows) - 1})
        rows = [rows[i] for i in keep]
    return [(r["t"], r["price_usd"]) for r in rows]
