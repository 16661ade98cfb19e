"""A checkpoint killed half way (SIGKILL while it writes its window's hashes) leaves nothing
half done: a second job meanwhile is refused naming the lease's holder, and once the lease runs
out the next checkpoint redoes it from the previous one and the chain verifies."""

from __future__ import annotations

import signal

import asyncpg
import pytest

from tests.integration.test_history import run_round
from tests.support.procs import seed_due, simctl, spawn, stop, wait_until
from workers.batch import BatchRunner

pytestmark = pytest.mark.timeout(180)


async def test_a_checkpoint_killed_half_way_is_redone(
    pg: asyncpg.Connection, runner: BatchRunner, env: dict[str, str], db_url: str
) -> None:
    await seed_due(pg, 30)
    await run_round(pg, runner)
    assert simctl(["checkpoint"], env).returncode == 0
    await run_round(pg, runner)
    short = {**env, "SIM_HISTORY_LEASE_S": "30"}
    blocker = await asyncpg.connect(db_url)
    try:
        # Hold the blocks table so the checkpoint stops in the middle of its window.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE sim_checkpoint_blocks IN SHARE MODE")
        proc = spawn(["checkpoint"], short)

        async def stuck() -> bool:
            return bool(
                await pg.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'INSERT INTO sim_checkpoint_blocks%'"
                )
            )

        await wait_until(stuck, 30, "the checkpoint to wait on its blocks")
        assert stop(proc, signal.SIGKILL) == -signal.SIGKILL
        await tx.rollback()
    finally:
        await blocker.close()
    building = await pg.fetchrow("SELECT id, state FROM sim_checkpoints WHERE state = 'building'")
    assert building is not None  # half done: its row is there, its lease still held

    busy = simctl(["checkpoint"], short)
    assert busy.returncode == 1
    assert "holds the history lease until" in busy.stderr and "checkpoint by simctl" in busy.stderr

    # The dead job's lease runs out (30 s on; here moved to its end rather than waited for).
    await pg.execute("UPDATE sim_history SET lease_until = now() - interval '1 second'")
    again = simctl(["checkpoint", "--json"], short)
    assert again.returncode == 0, again.stdout + again.stderr
    chain = await pg.fetch("SELECT id, prev_id, state FROM sim_checkpoints ORDER BY id")
    assert [c["state"] for c in chain] == ["verified", "verified"]
    assert chain[1]["prev_id"] == chain[0]["id"] and building["id"] not in [c["id"] for c in chain]
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM sim_checkpoint_blocks WHERE checkpoint_id = $1", building["id"]
        )
        == 0
    )
    full = simctl(["reconcile", "--full"], env)
    assert full.returncode == 0, full.stdout + full.stderr
