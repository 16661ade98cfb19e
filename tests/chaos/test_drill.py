"""The chaos tier: the drill at CI size against today's engine, and the drill's own judge (the
slot walk) shown to catch what it is there to catch."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from simtools.drill import queries as checks
from simtools.drill.queries import Trigger
from simtools.drill.run import SIZES, schedule
from simtools.harness.procs import module_argv
from store.seed import seed_demo


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory the postgres OS user can traverse too (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="simengine-chaos-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(180)
def test_ci_drill_every_fault_injected_and_every_invariant_holds(workdir: Path) -> None:
    done = subprocess.run(
        module_argv("simtools.drill", "--size", "ci", "--json", "--workdir", str(workdir)),
        capture_output=True,
        text=True,
        timeout=175,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 2: the drill could not run at all
    result = json.loads(done.stdout)
    plan = SIZES["ci"]
    # The faults really happened, every kind of them, as many as planned.
    assert result["faults_not_injected"] == []
    assert result["faults_by_kind"] == {
        "worker_kill": plan.worker_kills,
        "scheduler_kill": plan.scheduler_kills,
        "redis_flush": plan.flushes,
        "redis_restart": plan.redis_restarts,
        "pg_crash": plan.pg_crashes,
        "duplicate_run": plan.triggers,
    }
    assert result["worker_kills_mid_transaction"] >= 1
    assert result["runs"]["runs_in_faults"] > 0
    # Exactly-once, no slot skipped or early, nobody forgotten, no partial run, ledger clean.
    assert result["invariants"] == dict.fromkeys(result["invariants"], 0), result["invariants"]
    assert result["invariants_ok"]
    # Schedulers and workers outlive every fault: none exited by itself (the drill restarts
    # only the ones it killed).
    assert result["process_exits"] == [], result["process_exits"]
    assert "clean" in result["reconcile"]
    # Every child stopped and the temp cluster removed.
    assert list(workdir.iterdir()) == []


def test_the_fault_schedule_is_a_function_of_the_seed() -> None:
    plan = SIZES["full"]
    assert schedule(plan) == schedule(plan)
    other = schedule(type(plan)(**{**plan.__dict__, "seed": plan.seed + 1}))
    assert other != schedule(plan)
    faults, triggers = schedule(plan)
    assert len(faults) == 20 + 2 + 3 + 1 + 1 and len(triggers) == 200
    assert all(0 <= p.at_s <= plan.faults_s for p in faults + triggers)


async def _run(conn: asyncpg.Connection, user_id: int, slot: datetime, started: datetime) -> None:
    await conn.execute(
        "INSERT INTO sim_runs (user_id, scheduled_for, started_at, finished_at) "
        "VALUES ($1, $2, $3::timestamptz, $3::timestamptz + interval '100 milliseconds')",
        user_id,
        slot,
        started,
    )


async def test_slot_walk_tells_a_catch_up_and_a_trigger_from_a_skipped_or_early_slot(
    pg: asyncpg.Connection,
) -> None:
    await seed_demo(pg, 6, seed=5, interval_s=30)
    await checks.prepare(pg)
    first: dict[int, datetime] = {
        r["user_id"]: r["first_slot"]
        for r in await pg.fetch("SELECT user_id, first_slot FROM drill.first_slots")
    }
    iv = timedelta(seconds=30)
    s = {uid: first[uid] for uid in first}
    u1, u2, u3, u4, u5, u6 = sorted(first)
    # u1: on time twice.
    await _run(pg, u1, s[u1], s[u1] + timedelta(seconds=1))
    await _run(pg, u1, s[u1] + iv, s[u1] + iv + timedelta(seconds=1))
    # u2: the second slot never ran.
    await _run(pg, u2, s[u2], s[u2])
    await _run(pg, u2, s[u2] + 2 * iv, s[u2] + 2 * iv)
    # u3: ran 5 s before its slot with nothing to explain it.
    await _run(pg, u3, s[u3], s[u3])
    await _run(pg, u3, s[u3] + iv - timedelta(seconds=5), s[u3] + iv)
    # u4: the same, while a `simctl run` of it was in flight.
    early = s[u4] + iv - timedelta(seconds=5)
    await _run(pg, u4, s[u4], s[u4])
    await _run(pg, u4, early, early)
    # u5: fell far behind, so its next slot is the catch-up run's now() + interval.
    late = s[u5] + 3 * iv
    await _run(pg, u5, s[u5], late)
    await _run(pg, u5, late + iv + timedelta(milliseconds=50), late + iv + timedelta(seconds=1))
    # u6: never ran; its first slot is still pending (the walk judges pending slots too).
    await pg.execute("UPDATE users SET sim_next_run_at = NULL WHERE id <> $1", u6)
    await checks.record(
        pg, [], [Trigger(u4, early - timedelta(seconds=1), early + timedelta(seconds=1), 0)]
    )
    walk = await checks.slot_walk(pg)
    counts = {verdict: v["n"] for verdict, v in walk.items()}
    assert counts == {"ok": 7, "skipped": 1, "early": 1, "triggered": 1, "catch_up": 1}
    assert [e["user_id"] for e in walk["skipped"]["examples"]] == [u2]
    assert [e["user_id"] for e in walk["early"]["examples"]] == [u3]
    slow = await checks.late_slots(pg, 30)
    assert (slow["runs"], slow["with_trigger"], slow["max_s"]) == (1, 0, 90.0)  # u5's first run
