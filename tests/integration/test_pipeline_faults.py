"""The run pipeline under real processes and real faults: several schedulers and workers, a
worker SIGKILLed mid-batch, Redis flushed between scheduling and working."""

from __future__ import annotations

import signal

import asyncpg
import pytest
from redis.asyncio import Redis

from store.ledger import reconcile
from store.prices import audit_prices
from tests.support.procs import (
    no_partial_runs,
    run_counts,
    seed_due,
    simctl,
    spawn,
    stop,
    wait_until,
)

pytestmark = pytest.mark.timeout(240)


async def all_ran(conn: asyncpg.Connection, users: int) -> bool:
    n = await conn.fetchval("SELECT count(DISTINCT user_id) FROM sim_runs")
    return bool(n == users)


async def assert_exactly_once_and_clean(conn: asyncpg.Connection, users: int) -> None:
    total, distinct = await run_counts(conn)
    assert total == distinct == users  # one run per user: each first slot ran exactly once
    await no_partial_runs(conn)
    assert await reconcile(conn) == []
    # Every trade at its tick's stored price (and SIM_SLIPPAGE_BPS' default 5), whatever failed.
    assert await audit_prices(conn, 5) == []


async def test_three_schedulers_two_workers_run_every_slot_exactly_once(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    await seed_due(pg, 2000)
    env = {**env, "SIM_BATCH_SIZE": "50", "SIM_MAX_QUEUED_JOBS": "8"}
    procs = [spawn(["scheduler"], env) for _ in range(3)] + [
        spawn(["worker"], env) for _ in range(2)
    ]
    try:
        await wait_until(lambda: all_ran(pg, 2000), 120, "2,000 users to run")
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0] * 5
    await assert_exactly_once_and_clean(pg, 2000)


async def test_worker_killed_mid_batch_repeatedly_loses_and_doubles_nothing(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    users = 6000
    await seed_due(pg, users)
    env = {
        **env,
        "SIM_BATCH_SIZE": "25",
        "SIM_LEASE_S": "2",
        "SIM_WORKER_CONCURRENCY": "2",
        "SIM_MAX_QUEUED_JOBS": "20",
    }
    scheduler = spawn(["scheduler"], env)
    try:
        done_before = 0
        for _ in range(4):
            worker = spawn(["worker"], env)

            async def progressed(before: int = done_before) -> bool:
                n = await pg.fetchval("SELECT count(*) FROM sim_runs")
                return bool(n > before)

            await wait_until(progressed, 60, "the worker to commit some runs")
            stop(worker, signal.SIGKILL)  # no goodbye: in-flight transactions just vanish
            done_before = await pg.fetchval("SELECT count(*) FROM sim_runs")
            await no_partial_runs(pg)
        assert done_before < users, "the kills should have landed before the work was done"
        worker = spawn(["worker"], env)
        try:
            await wait_until(lambda: all_ran(pg, users), 120, "every slot to run after the kills")
        finally:
            stop(worker)
    finally:
        stop(scheduler)
    await assert_exactly_once_and_clean(pg, users)


async def test_redis_flushed_between_scheduling_and_working(
    pg: asyncpg.Connection, env: dict[str, str], redis_url: str
) -> None:
    await seed_due(pg, 500)
    env = {**env, "SIM_LEASE_S": "1", "SIM_BATCH_SIZE": "100"}
    first = simctl(["scheduler", "--once"], env)
    assert first.returncode == 0, first.stderr
    leased = await pg.fetchval("SELECT sum(cardinality(user_ids)) FROM sim_leases")
    assert leased == 500
    client = Redis.from_url(redis_url)
    try:
        assert await client.zcard(env["SIM_QUEUE_NAME"]) == 5
        await client.flushall()  # every job is gone
    finally:
        await client.aclose()
    burst = simctl(["worker", "--burst"], env)
    assert burst.returncode == 0, burst.stderr
    assert await pg.fetchval("SELECT count(*) FROM sim_runs") == 0

    async def leases_expired() -> bool:
        return bool(await pg.fetchval("SELECT max(until) < now() FROM sim_leases"))

    await wait_until(leases_expired, 10, "the leases to expire")
    again = simctl(["scheduler", "--once"], env)
    assert again.returncode == 0, again.stderr
    burst = simctl(["worker", "--burst"], env)
    assert burst.returncode == 0, burst.stderr
    await assert_exactly_once_and_clean(pg, 500)


async def test_sigterm_lets_the_worker_finish_cleanly(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    await seed_due(pg, 2000)
    env = {**env, "SIM_BATCH_SIZE": "20", "SIM_LEASE_S": "2"}
    assert simctl(["scheduler", "--once"], env).returncode == 0
    worker = spawn(["worker"], env)

    async def started() -> bool:
        return bool(await pg.fetchval("SELECT count(*) FROM sim_runs") > 0)

    await wait_until(started, 60, "the worker to start committing")
    assert stop(worker, signal.SIGTERM, timeout=30) == 0
    await no_partial_runs(pg)
    assert await reconcile(pg) == []


async def test_scheduler_and_worker_survive_their_database_connections_being_cut(
    pg: asyncpg.Connection, env: dict[str, str], db_name: str
) -> None:
    await seed_due(pg, 300)
    await pg.execute("UPDATE users SET sim_next_run_at = now() + interval '1 hour'")
    procs = [spawn(["scheduler"], env), spawn(["worker"], env)]
    try:

        async def connected() -> bool:
            n = await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                db_name,
            )
            return bool(n >= 2)

        await wait_until(connected, 30, "both processes to connect")
        # What a Postgres restart does to a client: every connection is cut.
        await pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            db_name,
        )
        await pg.execute("UPDATE users SET sim_next_run_at = now() - interval '1 second'")
        await wait_until(lambda: all_ran(pg, 300), 90, "every slot to run after the cut")
        assert all(p.popen.poll() is None for p in procs)
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0, 0]
    await assert_exactly_once_and_clean(pg, 300)


async def test_a_late_slot_is_leased_until_its_slot_plus_the_lease_not_a_lease_from_now(
    pg: asyncpg.Connection,
) -> None:
    """Losses in a row must not add a full lease each: a slot claimed late (its job lost once,
    an outage, a backlog) is leased until slot + SIM_LEASE_S, or a sixth of the lease from now
    (at least 5 s) if that has passed, so it comes back by then if this job is lost too."""
    from datetime import datetime, timedelta

    from store.runs import claim_due

    await seed_due(pg, 3)
    lease = timedelta(seconds=60)
    await pg.execute(
        "UPDATE users SET sim_next_run_at = now() - make_interval(secs => "
        "CASE id WHEN 1 THEN 0.5 WHEN 2 THEN 30 ELSE 600 END)"
    )
    slots = {
        r["id"]: r["sim_next_run_at"]
        for r in await pg.fetch("SELECT id, sim_next_run_at FROM users")
    }
    # One user per batch, so each has a lease row of its own.
    claimed = await claim_due(pg, 10, 60, batch_size=1)
    assert sorted(claimed.user_ids) == [1, 2, 3]
    now = await pg.fetchval("SELECT now()")
    rows: dict[int, datetime] = {
        b.user_ids[0]: b.until for b in claimed.batches if b.until is not None
    }
    stored = {
        r["user_ids"][0]: r["until"]
        for r in await pg.fetch("SELECT user_ids, until FROM sim_leases")
    }
    assert rows == stored
    tick = timedelta(milliseconds=1)
    # Fresh and 30 s late: the lease ends one lease after the slot.
    assert abs(rows[1] - (slots[1] + lease)) < tick
    assert abs(rows[2] - (slots[2] + lease)) < tick
    # 600 s late: a sixth of the lease (10 s) from the claim, not a full one.
    assert timedelta(seconds=9) < rows[3] - now < timedelta(seconds=11)
    # In one batch, the lease is the shortest of its users': the oldest slot's.
    await pg.execute("DELETE FROM sim_leases")
    together = await claim_due(pg, 10, 60, batch_size=10)
    assert len(together.batches) == 1 and together.until is not None
    assert abs(together.until - rows[3]) < timedelta(seconds=1)


async def test_a_scheduler_that_claimed_vacuums_the_lease_table(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    """Every batch leaves a dead lease row that every claim reads: a pass that claimed
    something vacuums sim_leases (at most once a second), a pass that claimed nothing does not."""

    async def vacuumed() -> int:
        await pg.execute("SELECT pg_stat_clear_snapshot()")
        n: int = await pg.fetchval(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'sim_leases'"
        )
        return n

    await seed_due(pg, 20)
    await pg.execute("UPDATE users SET sim_next_run_at = now() + interval '1 hour'")
    before = await vacuumed()
    idle = simctl(["scheduler", "--once"], env)
    assert idle.returncode == 0, idle.stderr
    assert await vacuumed() == before  # nothing claimed, nothing to clean
    await pg.execute("UPDATE users SET sim_next_run_at = now() - interval '1 minute'")
    busy = simctl(["scheduler", "--once"], env)
    assert busy.returncode == 0, busy.stderr
    assert await pg.fetchval("SELECT count(*) FROM sim_leases") == 1
    assert await vacuumed() == before + 1
