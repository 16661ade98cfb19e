"""The chaos drill's reads and bookkeeping (queries in drill.sql, beside this file). Only the drill's own
throw-away cluster is ever touched by these: its records live in schema `drill`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from simtools.harness.sqlfiles import query_file
from store.db import Conn

drill_query = query_file("simtools.drill", "drill.sql")


@dataclass(frozen=True, slots=True)
class Trigger:
    """One `simctl run` the drill issued: its user, when it started and ended, its exit code."""

    user_id: int
    issued_at: datetime
    done_at: datetime
    exit_code: int


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault the drill injected."""

    id: int
    kind: str
    at: datetime
    target: str
    detail: str


async def prepare(conn: Conn) -> int:
    """Create the drill's schema and snapshot every eligible user's first slot; returns how many."""
    await conn.execute(drill_query("drill_schema"))
    status: str = await conn.execute(drill_query("drill_snapshot_first_slots"))
    return int(status.rsplit(" ", 1)[-1])


async def record(conn: Conn, faults: Sequence[Fault], triggers: Sequence[Trigger]) -> None:
    """Write what the drill did, so the checks can judge the runs by SQL alone."""
    async with conn.transaction():
        await conn.execute(
            drill_query("drill_record_faults"),
            [f.id for f in faults],
            [f.kind for f in faults],
            [f.at for f in faults],
            [f.target for f in faults],
            [f.detail for f in faults],
        )
        await conn.execute(
            drill_query("drill_record_triggers"),
            [t.user_id for t in triggers],
            [t.issued_at for t in triggers],
            [t.done_at for t in triggers],
            [t.exit_code for t in triggers],
        )


async def progress(conn: Conn) -> dict[str, Any]:
    """Run ids so far, users due now and the oldest due slot's age (cheap; for progress lines)."""
    row = await conn.fetchrow(drill_query("drill_progress"))
    assert row is not None
    return dict(row.items())


async def open_transactions(conn: Conn, app_prefix: str) -> list[tuple[str, int, str]]:
    """(application_name, backend pid, state) of the backends named app_prefix* inside a
    transaction right now."""
    rows = await conn.fetch(drill_query("drill_open_transactions"), app_prefix + "%")
    return [(r["application_name"], r["pid"], r["state"]) for r in rows]


async def left_due(conn: Conn, grace_s: float) -> tuple[int, float | None]:
    """(users, oldest age in s) of eligible users due for longer than grace_s."""
    row = await conn.fetchrow(drill_query("drill_left_due"), float(grace_s))
    assert row is not None
    return row["users"], row["oldest_s"] if row["users"] else None


async def duplicate_slots(conn: Conn) -> int:
    """(user, slot) pairs with more than one run."""
    n: int = await conn.fetchval(drill_query("drill_duplicate_slots"))
    return n


async def slot_walk(conn: Conn) -> dict[str, dict[str, Any]]:
    """Verdict -> {n, examples} for every run and every pending slot (see drill.sql)."""
    rows = await conn.fetch(drill_query("drill_slot_walk"))
    return {r["verdict"]: {"n": r["n"], "examples": list(r["examples"])} for r in rows}


async def partial_runs(conn: Conn) -> dict[str, int]:
    """Counts of each kind of partial or unexplained write (all zero when runs were atomic)."""
    row = await conn.fetchrow(drill_query("drill_partial_runs"))
    assert row is not None
    return {k: int(v) for k, v in row.items()}


async def lag_phases(
    conn: Conn, faults_from: datetime, last_fault: datetime, recovered_from: datetime, end: datetime
) -> dict[str, dict[str, float | int | None]]:
    """Lag statistics (runs, p50_s, p99_s, max_s) per phase: warmup, faults, after, recovered."""
    rows = await conn.fetch(
        drill_query("drill_lag_phases"), faults_from, last_fault, recovered_from, end
    )
    found = {
        r["phase"]: {
            "runs": r["runs"],
            "p50_s": r["p50_s"],
            "p99_s": r["p99_s"],
            "max_s": r["max_s"],
        }
        for r in rows
    }
    empty: dict[str, float | int | None] = {"runs": 0, "p50_s": None, "p99_s": None, "max_s": None}
    return {p: found.get(p, empty) for p in ("warmup", "faults", "after", "recovered")}


async def fault_recovery(conn: Conn) -> list[dict[str, Any]]:
    """Per recorded fault: seconds to the first run finished after it, and the worst lag of the
    slots it was the first fault to meet (due since the previous fault, not yet started)."""
    rows = await conn.fetch(drill_query("drill_fault_recovery"))
    return [dict(r.items()) for r in rows]


async def run_totals(conn: Conn, faults_from: datetime, faults_to: datetime) -> dict[str, int]:
    """Runs in all, runs started during the faults, trades in all."""
    row = await conn.fetchrow(drill_query("drill_run_totals"), faults_from, faults_to)
    assert row is not None
    return {k: int(v) for k, v in row.items()}


async def late_slots(conn: Conn, lease_s: float) -> dict[str, Any]:
    """Runs later than the lease, and how many had a drill `simctl run` of their user in between."""
    row = await conn.fetchrow(drill_query("drill_late_slots"), float(lease_s))
    assert row is not None
    return dict(row.items())
