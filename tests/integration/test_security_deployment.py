"""One deployment per database, whatever shares Redis: two databases on one Redis and one
explicit queue name each run their own users, promptly, and a worker that meets the other
deployment's job leaves it for that deployment's workers (and says so at warning level)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import asyncpg
import pytest

from simconfig import Settings
from tests.support.procs import Proc, run_counts, seed_due, simctl, spawn, stop, wait_until
from tests.support.services import create_database, drop_database, url_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def other_db(template: str) -> Iterator[str]:
    """A second database, made like the test's own and then given an identity of its own (a
    copy of a database keeps its identity; a database migrated afresh draws one)."""
    name = create_database(template)
    yield name
    drop_database(name)


def _events(proc: Proc) -> list[dict[str, object]]:
    return [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]


async def test_two_databases_share_one_redis_and_queue_and_each_runs_only_its_own(
    pg: asyncpg.Connection, env: dict[str, str], other_db: str
) -> None:
    other = await asyncpg.connect(url_for(other_db))
    try:
        if await other.fetchval("SELECT to_regclass('sim_deployment') IS NOT NULL"):
            await other.execute("UPDATE sim_deployment SET id = gen_random_uuid()")
        await seed_due(pg, 3)
        await seed_due(other, 3)
        env_b = {**env, "DATABASE_URL": url_for(other_db)}
        # Both deployments' jobs are on the one queue before any worker runs: A's worker meets B's.
        assert simctl(["scheduler", "--once"], env_b).returncode == 0
        assert simctl(["scheduler", "--once"], env).returncode == 0
        worker_a = spawn(["worker"], env)
        worker_b: Proc | None = None
        try:
            await wait_until(lambda: _all_ran(pg), 30, "A's users to run")
            await wait_until(
                lambda: _has_foreign(worker_a), 30, "A's worker to meet B's job and say so"
            )
            assert await run_counts(other) == (0, 0)  # not run by A's worker
            worker_b = spawn(["worker"], env_b)
            # Well within the lease (SIM_LEASE_S, 60 s): B's job was put back, not lost.
            await wait_until(lambda: _all_ran(other), 20, "B's users to run")
        finally:
            assert stop(worker_a) == 0
            if worker_b is not None:
                assert stop(worker_b) == 0
        assert await run_counts(pg) == (3, 3)
        assert await run_counts(other) == (3, 3)
    finally:
        await other.close()


async def _all_ran(conn: asyncpg.Connection) -> bool:
    return await run_counts(conn) == (3, 3)


async def _has_foreign(proc: Proc) -> bool:
    foreign = [e for e in _events(proc) if e["event"] == "job.foreign"]
    if not foreign:
        return False
    # Once per job, however often the worker meets it, at warning level.
    assert len(foreign) == 1 and foreign[0]["level"] == "warning", foreign
    return True


def test_the_default_queue_name_derives_from_the_identity_and_an_explicit_one_wins(
    settings: Settings,
) -> None:
    ident = "0f3c2a9e-1b7d-4c55-9a0e-5d2c8b7e6f10"
    unset = settings.model_copy(update={"sim_queue_name": None})
    assert unset.queue_name(ident) == "simengine:0f3c2a9e1b7d"
    assert unset.queue_name("9" * 8 + ident[8:]) != unset.queue_name(ident)
    assert settings.queue_name(ident) == settings.sim_queue_name
    assert unset.with_queue(ident).sim_queue_name == "simengine:0f3c2a9e1b7d"
