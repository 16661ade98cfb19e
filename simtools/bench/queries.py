"""The benchmark's data access (queries in bench.sql, beside this file): scratch databases, populations, the
moves between phases and the reads that time them. Only the bench's own scratch databases are
written; the server's catalogue is read."""

from __future__ import annotations

import contextlib
import re
import statistics
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from simconfig import Settings
from simtools.harness.sqlfiles import query_file
from store.db import Conn
from store.errors import Refused
from store.market import ensure_market
from store.migrate import migrate
from store.runs import claim_due
from store.seed import seed_demo

# CREATE and DROP DATABASE take no bound parameter: a name must be one the bench makes.
_SCRATCH_NAME = re.compile(r"^simbench_[a-z0-9_]{1,50}$")


bench_query = query_file("simtools.bench", "bench.sql")


@dataclass(frozen=True, slots=True)
class Server:
    """What the bench records about a server, and a backend pid to find its processes by."""

    version: str
    version_num: int
    backend_pid: int


async def server(conn: Conn) -> Server:
    row = await conn.fetchrow(bench_query("bench_server"))
    assert row is not None
    return Server(row["version"], row["version_num"], row["backend_pid"])


async def server_settings(conn: Conn, always: list[str]) -> list[tuple[str, str, str]]:
    """(name, setting, vartype) of every setting the server's configuration sets, and of the
    `always` ones and every wal_* / checkpoint_* one whatever their source."""
    rows = await conn.fetch(bench_query("bench_server_settings"), always)
    return [(r["name"], r["setting"], r["vartype"]) for r in rows]


async def settings_of(conn: Conn, names: list[str]) -> dict[str, str]:
    rows = await conn.fetch(bench_query("bench_settings_of"), names)
    return {r["name"]: r["setting"] for r in rows}


async def wal_segment_mb(conn: Conn) -> int:
    mb: int = await conn.fetchval(bench_query("bench_wal_segment_mb"))
    return mb


def _scratch(name: str) -> str:
    if _SCRATCH_NAME.match(name) is None:
        raise Refused(f"not a bench scratch database name: {name!r}")
    return name


async def create_database(conn: Conn, name: str) -> None:
    """A fresh, empty database `name` (one left by an earlier run of the same pid is dropped)."""
    await conn.execute(f'DROP DATABASE IF EXISTS "{_scratch(name)}" WITH (FORCE)')
    await conn.execute(f'CREATE DATABASE "{_scratch(name)}"')


async def drop_database(conn: Conn, name: str) -> None:
    await conn.execute(f'DROP DATABASE IF EXISTS "{_scratch(name)}" WITH (FORCE)')


async def scratch_databases(conn: Conn, prefix: str) -> list[str]:
    """The databases named `prefix`_*: every one a run made, whichever phase failed."""
    return [r["datname"] for r in await conn.fetch(bench_query("bench_scratch_databases"), prefix)]


async def populate(conn: Conn, users: int, *, due: bool, settings: Settings | None) -> None:
    """Migrate, store the market (SIM_SEED's, else seed 42: reproducible), seed `users` demo
    users (seed 11), make them all due if asked, and vacuum, as the ceiling's population is."""
    await migrate(conn)
    if settings is not None:
        await ensure_market(conn, settings, seed_if_unset=42)
    await seed_demo(conn, users, seed=11)
    if due:
        await conn.execute(bench_query("bench_all_due"))
    await conn.execute(bench_query("bench_vacuum_all"))


async def checkpoint(conn: Conn) -> None:
    """Start a timed phase with no checkpoint in progress: one left running by the previous
    phase's writes (the ceiling writes gigabytes of WAL) cost the next phase 10-15 % (measured:
    15,000 runs/s before the ceiling phase, 13,700 right after). Needs superuser or
    pg_checkpoint; without it, phases run as they are."""
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute(bench_query("bench_checkpoint"))


async def restart_ceiling(conn: Conn) -> None:
    """No runs, no trades, every user due and unleased, vacuumed: each client count of the
    ceiling starts from the same state."""
    await conn.execute(bench_query("bench_forget_runs"))
    await conn.execute(bench_query("bench_all_due"))
    await conn.execute(bench_query("bench_vacuum_state"))
    await checkpoint(conn)


async def all_due(conn: Conn) -> None:
    await conn.execute(bench_query("bench_all_due"))


async def park(conn: Conn) -> None:
    await conn.execute(bench_query("bench_park"))


async def due_at_once(conn: Conn, ahead_s: int) -> datetime:
    """Every user due at one slot `ahead_s` seconds from now, then vacuumed; returns the slot."""
    at: datetime = await conn.fetchval(bench_query("bench_due_at_once"), ahead_s)
    await conn.execute(bench_query("bench_vacuum_users"))
    return at


async def spread(conn: Conn, interval_s: int, ahead_s: float) -> datetime:
    """Vacuum what a burst left, then spread every user's slots over `interval_s` from a start
    `ahead_s` seconds from now; returns the start."""
    await conn.execute(bench_query("bench_vacuum_written"))
    start: datetime = await conn.fetchval(bench_query("bench_ahead"), ahead_s)
    await conn.execute(bench_query("bench_spread_from"), interval_s, start)
    return start


async def seconds_until(conn: Conn, at: datetime) -> float:
    seconds: float = await conn.fetchval(bench_query("bench_seconds_until"), at)
    return seconds


async def top_run_id(conn: Conn) -> int:
    top: int = await conn.fetchval(bench_query("bench_top_run_id"))
    return top


async def run_ids_taken(conn: Conn) -> int | None:
    """The highest sim_runs id handed out, or None when the sequence cannot tell."""
    taken: int | None = await conn.fetchval(bench_query("bench_run_ids_taken"))
    return taken


async def run_count(conn: Conn) -> int:
    n: int = await conn.fetchval(bench_query("bench_run_count"))
    return n


async def trade_count(conn: Conn) -> int:
    n: int = await conn.fetchval(bench_query("bench_trade_count"))
    return n


async def lags_after(conn: Conn, run_id: int) -> list[float]:
    """Lag in seconds of every run after `run_id`, ascending."""
    return [r["lag"] for r in await conn.fetch(bench_query("bench_lags_after"), run_id)]


async def claim_ms(conn: Conn, users: int, *, batch: int, samples: int) -> float:
    """Median wall time of one claim of `batch` users on a population of `users` due at random
    times, each claim rolled back so the next one sees the same population. Seeds what is missing
    first (the population grows from one size to the next)."""
    have: int = await conn.fetchval(bench_query("bench_user_count"))
    if users > have:
        await seed_demo(conn, users - have, seed=users)
    await conn.execute(bench_query("bench_due_spread"))
    await conn.execute(bench_query("bench_vacuum_users"))
    times = []
    for _ in range(samples):
        tr = conn.transaction()
        await tr.start()
        try:
            t0 = time.perf_counter()
            await claim_due(conn, batch, 60, batch)
            times.append((time.perf_counter() - t0) * 1000)
        finally:
            await tr.rollback()
    return statistics.median(times)
