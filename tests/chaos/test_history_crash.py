"""A checkpoint and a prune interrupted by a Postgres crash (`pg_ctl stop -m immediate`, then a
restart and its recovery) leave nothing half done: the next job finishes or redoes the work,
the views read what they read before, and `reconcile --full` is clean. On a private cluster:
the shared server is never stopped."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from engine.market import Market
from simconfig import Settings
from store.db import connect, create_pool
from tests.integration.test_retention import (
    ENGINE,
    KEY,
    counts,
    make_history,
    reconcile_clean,
    views,
)
from tests.support.keys import with_admin_key
from tests.support.pgcluster import PgCluster
from tests.support.procs import simctl, spawn, stop, wait_until
from workers.batch import BatchRunner

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def crashable(env: dict[str, str]) -> AsyncIterator[tuple[PgCluster, str, dict[str, str]]]:
    """A private cluster with a migrated database: (cluster, url, env with an admin key)."""
    cluster = PgCluster()
    cluster.start()
    try:
        admin = await asyncpg.connect(cluster.url())
        await admin.execute("CREATE DATABASE sim")
        await admin.close()
        url = cluster.url("sim")
        base = with_admin_key({**env, "DATABASE_URL": url}, KEY)
        done = simctl(["migrate"], base)
        assert done.returncode == 0, done.stderr
        yield cluster, url, base
    finally:
        cluster.close()


async def crash_and_restart(cluster: PgCluster, proc: object) -> None:
    cluster.stop("immediate")  # a crash: no checkpoint of the server's, recovery at start
    stop(proc)  # type: ignore[arg-type]  # the job lost its session; gone or told to go
    cluster.start()


async def waiting_on(conn: asyncpg.Connection, statement: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE $1",
            statement + "%",
        )
    )


async def test_a_checkpoint_cut_short_by_a_postgres_crash_is_redone(
    crashable: tuple[PgCluster, str, dict[str, str]], settings: Settings
) -> None:
    cluster, url, env = crashable
    pg = await connect(url)
    pool = await create_pool(url, max_size=2)
    try:
        runner = BatchRunner(pool, settings, Market(settings.market_params()))
        await make_history(pg, runner, settings, users=3, runs=12)  # and a verified checkpoint
        blocker = await asyncpg.connect(url)
        tx = blocker.transaction()
        await tx.start()
        # The checkpoint stops in the middle of its window, its `building` row committed.
        await blocker.execute("LOCK TABLE sim_checkpoint_blocks IN SHARE MODE")
        proc = spawn(["checkpoint"], env)

        async def stuck() -> bool:
            return await waiting_on(pg, "INSERT INTO sim_checkpoint_blocks")

        await wait_until(stuck, 30, "the checkpoint to wait on its blocks")
        await crash_and_restart(cluster, proc)  # the blocker still holding the lock
        blocker.terminate()
    finally:
        pg.terminate()
        pool.terminate()
    pg = await connect(url)
    try:
        building = await pg.fetchrow("SELECT id FROM sim_checkpoints WHERE state = 'building'")
        assert building is not None  # committed before the crash: half done, and recovered so
        held = await pg.fetchrow("SELECT lease_holder FROM sim_history")
        assert held is not None and held["lease_holder"].startswith("checkpoint by simctl")
        refused = simctl(["checkpoint"], env)
        assert refused.returncode == 1 and held["lease_holder"] in refused.stderr
        # The dead job's lease runs out (moved to its end rather than waited for).
        await pg.execute("UPDATE sim_history SET lease_until = now() - interval '1 second'")
        again = simctl(["checkpoint", "--json"], env)
        assert again.returncode == 0, again.stdout + again.stderr
        chain = await pg.fetch("SELECT id, prev_id, state FROM sim_checkpoints ORDER BY id")
        assert [c["state"] for c in chain] == ["verified", "verified"]
        assert chain[1]["prev_id"] == chain[0]["id"]
        assert building["id"] not in [c["id"] for c in chain]
        assert json.loads(again.stdout)["rows"]["sim_runs"] > 0  # the window was redone
        reconcile_clean(env)
    finally:
        await pg.close()


async def test_a_prune_cut_short_by_a_postgres_crash_leaves_views_exact_and_is_finished(
    crashable: tuple[PgCluster, str, dict[str, str]], settings: Settings, tmp_path: Path
) -> None:
    cluster, url, env = crashable
    pg = await connect(url)
    pool = await create_pool(url, max_size=2)
    archive = tmp_path / "archive"
    try:
        runner = BatchRunner(pool, settings, Market(settings.market_params()))
        await make_history(pg, runner, settings, users=3, runs=40)
        before_views = await views(pg)
        before = await counts(pg)
        slow = {**env, "SIM_PRUNE_BATCH": "7", "SIM_PRUNE_PAUSE_MS": "200"}
        proc = spawn(["prune", "--keep-days", "0", "--archive", str(archive)], slow)

        async def some_deleted() -> bool:
            return bool(await pg.fetchval(ENGINE["trades"]) < before["trades"] - 7)

        await wait_until(some_deleted, 60, "the first batches to commit")
        await crash_and_restart(cluster, proc)
    finally:
        pg.terminate()
        pool.terminate()
    pg = await connect(url)
    try:
        assert (await counts(pg))["trades"] > 0  # half done
        assert await views(pg) == before_views  # yet every view reads what it read before
        reconcile_clean(env)
        await pg.execute("UPDATE sim_history SET lease_until = now() - interval '1 second'")
        done = simctl(["prune", "--keep-days", "0", "--archive", str(archive), "--json"], env)
        assert done.returncode == 0, done.stderr
        after = await counts(pg)
        assert await views(pg) == before_views
        reconcile_clean(env)
        # Every deleted row is in the archive, once, and the archive verifies.
        manifest = json.loads((archive / "manifest.json").read_text())
        archived = dict.fromkeys(before, 0)
        for entry in manifest["files"].values():
            archived[entry["table"]] += entry["rows"]
        assert archived == {t: before[t] - after[t] for t in before}
        verified = simctl(["archive", "verify", str(archive)], env, timeout=120)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        await pg.close()
