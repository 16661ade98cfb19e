"""Real outages of the dependencies: a private Postgres shut down, refusing and crashed; a private
Redis stopped at the same time; backends terminated under the scheduler; a worker SIGKILLed
while its jobs wait on row locks. The processes wait, say which dependency is away, stay
answerable, and every slot still runs exactly once."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from simconfig import Settings
from store.db import create_pool
from store.ledger import reconcile
from store.market import load_market_retrying
from tests.integration.test_observability import get
from tests.support.pgcluster import PgCluster
from tests.support.procs import (
    Proc,
    no_partial_runs,
    run_counts,
    seed_due,
    simctl,
    spawn,
    stop,
    wait_until,
)
from tests.support.services import RedisServer, free_port
from workers.enqueue import connect_redis
from workers.scheduler import Scheduler

pytestmark = pytest.mark.timeout(300)


def events(proc: Proc, name: str) -> list[dict[str, object]]:
    """The JSON log events of a process with this name."""
    found = []
    for line in proc.output().splitlines():
        if f'"{name}"' in line:
            record = json.loads(line)
            if record.get("event") == name:
                found.append(record)
    return found


async def ran(url: str, users: int, runs: int | None = None) -> bool:
    try:
        conn = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError):
        return False
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT user_id) AS u FROM sim_runs"
        )
        assert row is not None
        return bool(row["u"] == users and (runs is None or row["n"] == runs))
    finally:
        await conn.close()


@pytest.fixture
async def cluster() -> AsyncIterator[PgCluster]:
    server = PgCluster()
    server.start()
    try:
        yield server
    finally:
        server.close()


async def test_processes_wait_out_postgres_shutting_down_refusing_and_crashing(
    cluster: PgCluster, env: dict[str, str]
) -> None:
    admin = await asyncpg.connect(cluster.url())
    await admin.execute("CREATE DATABASE sim")
    await admin.close()
    url = cluster.url("sim")
    redis = RedisServer()
    redis.start()
    base = {**env, "DATABASE_URL": url, "REDIS_URL": redis.url, "SIM_LEASE_S": "2"}
    assert simctl(["migrate"], base).returncode == 0
    held = await asyncpg.connect(url)
    await seed_due(held, 200)

    # A smart shutdown with a session still open: new connections get "the database system is
    # shutting down" (SQLSTATE 57P03, as "starting up" does) until that session ends.
    cluster.stop("smart", wait=False)

    async def refusing_new_sessions() -> bool:
        try:
            await (await asyncpg.connect(url)).close()
        except asyncpg.CannotConnectNowError:
            return True
        return False

    await wait_until(refusing_new_sessions, 30, "Postgres to refuse new sessions")
    wport, sport = free_port(), free_port()
    worker = spawn(["worker"], {**base, "SIM_METRICS_PORT": str(wport)})
    scheduler = spawn(["scheduler"], {**base, "SIM_METRICS_PORT": str(sport)})
    procs = [worker, scheduler]
    try:

        async def both_waiting(at_least: int = 1) -> bool:
            return all(len(events(p, "postgres.unavailable")) >= at_least for p in procs)

        await wait_until(both_waiting, 60, "both processes to wait for Postgres")
        assert all("shutting down" in str(events(p, "postgres.unavailable")[0]) for p in procs)
        for port in (wport, sport):  # answering, alive, not ready, and saying why
            assert get(port, "/livez") == (200, "alive\n")
            status, body = get(port, "/readyz")
            assert status == 503 and body.startswith("not ready: postgres"), body
        await held.close()  # the shutdown completes: connections are now refused outright
        await wait_until(lambda: _stopped(cluster), 30, "Postgres to stop")
        seen = [len(events(p, "postgres.unavailable")) for p in procs]

        async def still_waiting() -> bool:
            return all(
                len(events(p, "postgres.unavailable")) > n for p, n in zip(procs, seen, strict=True)
            )

        await wait_until(still_waiting, 60, "both processes to keep waiting while it is down")
        assert all(p.popen.poll() is None for p in procs)
        assert not events(scheduler, "redis.unavailable")  # the right dependency is named
        cluster.start()
        await wait_until(lambda: ran(url, 200), 120, "every slot to run once Postgres is up")

        # A crash of both at once while they run: Redis stopped, Postgres killed (recovery at
        # its next start). Redis comes back first: the worker makes its arq Worker again
        # while Postgres is still away, and waits for it without exiting.
        conn = await asyncpg.connect(url)
        await conn.execute("UPDATE users SET sim_next_run_at = now() + interval '1 hour'")
        await conn.close()
        reconnects = len(events(worker, "worker.reconnected"))
        redis.stop()
        cluster.stop("immediate")

        async def worker_lost_redis() -> bool:
            return len(events(worker, "redis.unavailable")) >= 1

        await wait_until(worker_lost_redis, 60, "the worker to lose Redis")
        redis.start_on_same_port()

        async def worker_rebuilt() -> bool:
            return len(events(worker, "worker.reconnected")) > reconnects

        await wait_until(worker_rebuilt, 60, "the worker to come back to Redis")
        assert all(p.popen.poll() is None for p in procs)
        cluster.start()
        conn = await asyncpg.connect(url)
        await conn.execute("UPDATE users SET sim_next_run_at = now() - interval '1 second'")
        await conn.close()
        await wait_until(lambda: ran(url, 200, 400), 120, "every slot to run after the crash")
        assert all(p.popen.poll() is None for p in procs)
        assert all(get(port, "/readyz")[0] == 200 for port in (wport, sport))
        assert "Traceback" not in worker.output() + scheduler.output()
    finally:
        codes = [stop(p) for p in procs]
        redis.close()
    assert codes == [0, 0]
    conn = await asyncpg.connect(url)
    try:
        total, distinct = await run_counts(conn)
        assert total == distinct == 400
        await no_partial_runs(conn)
        assert await reconcile(conn) == []
    finally:
        await conn.close()


async def _stopped(cluster: PgCluster) -> bool:
    return not cluster.running()


async def test_the_scheduler_retries_on_a_fresh_connection(
    pg: asyncpg.Connection, settings: Settings, db_url: str, db_name: str
) -> None:
    await seed_due(pg, 30)
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    redis = await connect_redis(settings)
    holder = await asyncpg.connect(db_url)
    try:
        scheduler = Scheduler(settings, pool, redis, await load_market_retrying(pool, settings))
        scheduler._last_tick = scheduler.market.tick_of(datetime.now(UTC))  # no tick to write
        tx = holder.transaction()
        await tx.start()
        await holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        passing = asyncio.create_task(scheduler.run_pass())

        async def scheduler_waits() -> bool:
            n = await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND wait_event_type = 'Lock'",
                db_name,
            )
            return bool(n == 1)

        await wait_until(scheduler_waits, 30, "the scheduler's statement to wait on the lock")
        # The connection dies under the statement (what a failover does to it).
        await pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND wait_event_type = 'Lock'",
            db_name,
        )
        await tx.commit()
        report = await passing  # retried on a fresh connection, not the dead one
        assert report.claimed == 30
    finally:
        await holder.close()
        await redis.aclose()
        await pool.close()


async def test_a_killed_workers_jobs_neither_hold_back_claims_nor_count_as_queued(
    pg: asyncpg.Connection, env: dict[str, str], db_url: str, db_name: str, redis_url: str
) -> None:
    users = 300
    await seed_due(pg, users)
    env = {
        **env,
        "SIM_BATCH_SIZE": "20",
        "SIM_MAX_QUEUED_JOBS": "2",
        "SIM_WORKER_CONCURRENCY": "2",
        "SIM_LEASE_S": "2",
        "SIM_JOB_TIMEOUT_S": "900",  # a dead job's in-progress key would live 910 s
    }
    assert simctl(["scheduler", "--once"], env).returncode == 0  # two jobs of 20 users
    holder = await asyncpg.connect(db_url)
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT 1 FROM users FOR UPDATE")  # every batch waits mid-transaction
    doomed = spawn(["worker"], env)
    try:

        async def both_jobs_blocked() -> bool:
            n = await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND wait_event_type = 'Lock'",
                db_name,
            )
            return bool(n == 2)

        await wait_until(both_jobs_blocked, 60, "the worker's two jobs to wait on the row locks")
    finally:
        stop(doomed, signal.SIGKILL)
    await tx.rollback()
    await holder.close()
    client = Redis.from_url(redis_url)
    try:
        assert await client.zcard(env["SIM_QUEUE_NAME"]) == 2  # still listed, in progress
    finally:
        await client.aclose()
    status = simctl(["status", "--json"], env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["queue_depth"] == 0  # nobody is running them
    procs = [spawn(["scheduler"], env), spawn(["worker"], env)]
    try:

        async def all_ran() -> bool:
            return bool(await pg.fetchval("SELECT count(DISTINCT user_id) FROM sim_runs") == users)

        # With the dead jobs counted, SIM_MAX_QUEUED_JOBS=2 would stop every claim for 910 s.
        await wait_until(all_ran, 120, "every slot to run despite the dead worker's jobs")
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0, 0]
    total, distinct = await run_counts(pg)
    assert total == distinct == users
    await no_partial_runs(pg)
    assert await reconcile(pg) == []


def test_a_private_redis_leaves_no_folder_behind() -> None:
    server = RedisServer()
    server.start()
    folder = Path(server.dir)
    server.stop()
    server.start_on_same_port()  # a restart keeps it
    assert folder.is_dir()
    server.close()
    assert not folder.exists()
    forgotten = RedisServer()
    folder = Path(forgotten.dir)
    del forgotten  # never started nor closed: the folder still goes with the object
    gc.collect()
    assert not folder.exists()
