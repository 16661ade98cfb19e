"""What grows and what runs out: size samples of the tables the engine writes, the days left of
each `integer` id, dead row versions on `users`, retention's window and the latest checkpoint.

Everything here reads the catalogue and the statistics collector (sizes are a stat of the
files, rows the planner's estimate), never a count: it costs the same at any history size.
`sample` is called by the scheduler every SIM_GROWTH_SAMPLE_S; `overview` is what `simctl
status` and the metrics show."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from store.db import Conn, Record
from store.sqlfiles import query

# A rate needs two samples at least this far apart (a sample set taken twice by two
# schedulers in the same second says nothing).
MIN_SPAN_S = 60.0
# Warn when an id runs out within this many days at the current rate, or when less than this
# share of its ids is left whatever the rate (a rate needs samples, the share does not).
WARN_DAYS = 90.0
WARN_LEFT_SHARE = 0.10
INT4_MAX = 2_147_483_647
SAMPLE_KEEP_DAYS = 8


def _q(name: str) -> str:
    return query(name, "growth.sql")


@dataclass(frozen=True, slots=True)
class TableGrowth:
    """One table now (bytes with indexes and TOAST, estimated rows) and its growth per day
    between the two samples compared (None: fewer than two samples, `MIN_SPAN_S` apart)."""

    table: str
    bytes: int
    est_rows: int | None
    bytes_per_day: int | None
    rate_over_s: float | None  # seconds between the two samples the rate comes from
    sampled_at: datetime | None  # the newest sample


@dataclass(frozen=True, slots=True)
class IdHeadroom:
    """An id sequence that ends at or below 2^31 - 1: ids left, and days left at the rate ids
    were taken since the sample compared (None: no sample yet, or not `MIN_SPAN_S` ago)."""

    table: str
    column: str
    type: str
    last: int | None  # the sequence's last value (None: never used)
    max: int
    ids_left: int
    ids_per_day: float | None
    days_left: float | None  # None: no rate yet, or ids not being taken
    warning: str | None


@dataclass(frozen=True, slots=True)
class UsersVacuum:
    """Dead row versions on `users` (one per run: its update is never HOT) and their cleaning."""

    dead_tuples: int
    live_tuples: int
    n_mod_since_analyze: int
    last_autovacuum: datetime | None
    last_vacuum: datetime | None
    autovacuum_count: int
    vacuum_count: int
    vacuum_at_dead: int  # autovacuum starts on users above this many dead row versions
    autovacuum_on: bool


@dataclass(frozen=True, slots=True)
class HistoryState:
    """Retention's window (sim_history) and the checkpoints an operator acts on."""

    keep_days: int | None
    pruned_through: int | None
    pruned_at: datetime | None
    pruned_cut_at: datetime | None
    checkpoint_id: int | None  # the newest verified checkpoint
    checkpoint_cut_at: datetime | None
    checkpoint_verified_at: datetime | None
    checkpoint_age_s: float | None  # now - its cut
    failed_id: int | None  # the newest failed checkpoint after it
    failed_at: datetime | None
    failed_error: str | None
    building_id: int | None
    building_since: datetime | None
    run_days: int  # sim_runs' day partitions (0015)
    run_days_through: datetime | None  # the end of the newest one
    run_days_ahead: float | None  # days from now to that end


@dataclass(frozen=True, slots=True)
class Overview:
    tables: list[TableGrowth]
    ids: list[IdHeadroom]
    users: UsersVacuum | None
    history: HistoryState | None
    warnings: list[str] = field(default_factory=list)


# simctl status warns when sim_runs' day partitions end sooner than this (housekeeping keeps
# them store.partitions.AHEAD_DAYS ahead).
RUN_DAYS_AHEAD_WARN = 2.0


async def sample(conn: Conn, *, min_interval_s: float = 0.0) -> bool:
    """Record one sample set (one row per watched table, at now()) and forget samples older
    than 8 days, in one transaction. Skipped (False) when the newest sample is younger than
    `min_interval_s`: several schedulers may call it, one sample set per interval is enough."""
    async with conn.transaction():
        if min_interval_s > 0:
            last = await conn.fetchval(_q("last_sample_at"))
            if last is not None:
                age_s = await conn.fetchval("SELECT extract(epoch FROM now() - $1)::float8", last)
                if age_s < min_interval_s:
                    return False
        rows = await conn.fetch(_q("growth_tables"))
        await conn.execute(
            _q("insert_samples"),
            [r["relname"] for r in rows],
            [r["total_bytes"] for r in rows],
            [r["est_rows"] for r in rows],
            [r["id_last"] for r in rows],
        )
        await conn.execute(_q("forget_samples"), SAMPLE_KEEP_DAYS)
    return True


async def _rates(conn: Conn, names: Sequence[str]) -> tuple[datetime, dict[str, Record]]:
    rows = await conn.fetch(_q("growth_rates"), list(names))
    now: datetime = await conn.fetchval("SELECT now()")
    return now, {r["relname"]: r for r in rows}


def _span_s(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    span = (later - earlier).total_seconds()
    return span if span >= MIN_SPAN_S else None


def _table_growth(t: Record, r: Record | None) -> TableGrowth:
    per_day = span = None
    if r is not None:
        span = _span_s(r["newest_at"], r["base_at"])
        if span is not None:
            per_day = round((r["newest_bytes"] - r["base_bytes"]) * 86_400 / span)
    return TableGrowth(
        table=t["relname"],
        bytes=t["total_bytes"],
        est_rows=t["est_rows"],
        bytes_per_day=per_day,
        rate_over_s=span,
        sampled_at=None if r is None else r["newest_at"],
    )


def _headroom(t: Record, r: Record | None, now: datetime) -> IdHeadroom:
    last = t["id_last"]
    id_max = t["id_max"]
    left = id_max - (last or 0)
    per_day = days = None
    if r is not None:
        # Ids taken since the oldest sample of the last day (else the newest before that),
        # against the sequence now: one sample a minute old is enough.
        at, then = (
            (r["base_at"], r["base_id"])
            if r["base_at"] is not None
            else (r["newest_at"], r["newest_id"])
        )
        span = _span_s(now, at)
        if span is not None:
            per_day = ((last or 0) - (then or 0)) * 86_400 / span
            days = left / per_day if per_day > 0 else None
    warning = None
    if days is not None and days < WARN_DAYS:
        warning = f"{t['relname']}.{t['id_column']} ({t['id_type']}) runs out in {days:.1f} days"
    elif left < WARN_LEFT_SHARE * id_max:
        warning = f"{t['relname']}.{t['id_column']} ({t['id_type']}) has {left:,} ids left"
    return IdHeadroom(
        table=t["relname"],
        column=t["id_column"],
        type=t["id_type"],
        last=last,
        max=id_max,
        ids_left=left,
        ids_per_day=per_day,
        days_left=days,
        warning=warning,
    )


async def growth(conn: Conn) -> list[TableGrowth]:
    """Each watched table: size and estimated rows now, bytes per day from the samples."""
    tables = await conn.fetch(_q("growth_tables"))
    _, rates = await _rates(conn, [t["relname"] for t in tables])
    return [_table_growth(t, rates.get(t["relname"])) for t in tables]


async def id_headroom(conn: Conn) -> list[IdHeadroom]:
    """Each id sequence ending at or below 2^31 - 1: ids and days left, a warning under 90."""
    tables = [t for t in await conn.fetch(_q("growth_tables")) if _int_id(t)]
    now, rates = await _rates(conn, [t["relname"] for t in tables])
    return [_headroom(t, rates.get(t["relname"]), now) for t in tables]


def _int_id(t: Record) -> bool:
    return t["id_max"] is not None and t["id_max"] <= INT4_MAX


async def users_vacuum(conn: Conn) -> UsersVacuum | None:
    """Dead row versions on users, the last (auto)vacuum and when autovacuum starts."""
    row = await conn.fetchrow(_q("users_vacuum"))
    return None if row is None else UsersVacuum(**dict(row.items()))


async def history_state(conn: Conn) -> HistoryState | None:
    """Retention's window and the newest verified, failed and building checkpoints."""
    row = await conn.fetchrow(_q("history_state"))
    return None if row is None else HistoryState(**dict(row.items()))


async def overview(conn: Conn, *, checkpoint_interval_s: float | None = None) -> Overview:
    """All of the above in one read, with what an operator should act on: an id running out,
    dead tuples on users past twice autovacuum's trigger (it is not keeping up, or a long
    snapshot holds it back), autovacuum off for users, a checkpoint that failed after the last
    verified one, and (given the interval they are taken at) a checkpoint older than two."""
    tables = await conn.fetch(_q("growth_tables"))
    now, rates = await _rates(conn, [t["relname"] for t in tables])
    out = Overview(
        tables=[_table_growth(t, rates.get(t["relname"])) for t in tables],
        ids=[_headroom(t, rates.get(t["relname"]), now) for t in tables if _int_id(t)],
        users=await users_vacuum(conn),
        history=await history_state(conn),
    )
    out.warnings.extend(i.warning for i in out.ids if i.warning is not None)
    u = out.users
    if u is not None and not u.autovacuum_on:
        out.warnings.append("autovacuum is off for users")
    elif u is not None and u.dead_tuples > 2 * u.vacuum_at_dead:
        out.warnings.append(
            f"users has {u.dead_tuples:,} dead row versions, over twice autovacuum's trigger "
            f"({u.vacuum_at_dead:,}): autovacuum is behind or a long transaction holds it back"
        )
    h = out.history
    if h is not None and (h.run_days_ahead is None or h.run_days_ahead < RUN_DAYS_AHEAD_WARN):
        through = "none" if h.run_days_through is None else h.run_days_through.isoformat()
        out.warnings.append(
            f"sim_runs has day partitions through {through} only: a run later than that is "
            "refused; the schedulers' housekeeping makes them a week ahead (is one running?)"
        )
    if h is not None and h.failed_id is not None:
        out.warnings.append(f"checkpoint {h.failed_id} failed: {h.failed_error or 'no reason'}")
    if (
        h is not None
        and checkpoint_interval_s is not None
        and h.checkpoint_age_s is not None
        and h.checkpoint_age_s > 2 * checkpoint_interval_s
    ):
        out.warnings.append(
            f"the latest verified checkpoint ({h.checkpoint_id}) is "
            f"{h.checkpoint_age_s / 3600:.1f} h old"
        )
    return out


def as_json(view: Overview) -> dict[str, Any]:
    """The overview as `simctl status --json` prints it."""
    from dataclasses import asdict

    return {
        "tables": {
            t.table: {k: v for k, v in asdict(t).items() if k != "table"} for t in view.tables
        },
        "id_headroom": [asdict(i) for i in view.ids],
        "users_vacuum": None if view.users is None else asdict(view.users),
        "history": None if view.history is None else asdict(view.history),
        "warnings": list(view.warnings),
    }
