"""Only the engine can hold the engine's locks: the read role (made as `simctl grant-reader`
makes it) tries every lock the engine coordinates through, by advisory keys (which any role may take) and
by the engine's own mechanism, and while it holds whatever it could take, a claim and a run still
happen. And claims that stall, whatever the cause, turn a scheduler's readiness."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from prometheus_client import REGISTRY

from simconfig import Settings
from store.db import create_pool
from store.market import load_market_retrying
from tests.support.procs import run_counts, seed_due, simctl
from tests.support.readers import reader_session
from workers.enqueue import connect_redis
from workers.scheduler import Scheduler

pytestmark = pytest.mark.timeout(180)

# Advisory-lock keys for imports vs runs, claims and market changes: any role may take an
# advisory lock, which is why the engine locks rows of sim_locks instead, and a reader holding
# these keys must not hold it up.
OLD_ADVISORY_KEYS = (0x5072_6963_6573, 0x436C_6169_6D73, 0x4D61_726B_6574)
# What a role could try against the engine's own locks (each must be refused to the reader).
ENGINE_LOCK_ATTEMPTS = (
    "SELECT name FROM sim_locks FOR UPDATE",
    "SELECT name FROM sim_locks FOR SHARE",
    "SELECT name FROM sim_locks FOR KEY SHARE",
    "LOCK TABLE sim_locks IN ACCESS SHARE MODE",
    "LOCK TABLE sim_locks IN ROW SHARE MODE",
    "LOCK TABLE sim_price_fence IN ACCESS SHARE MODE",
    "LOCK TABLE sim_price_fence IN SHARE MODE",
    "LOCK TABLE sim_price_fence IN EXCLUSIVE MODE",
    "LOCK TABLE sim_price_fence IN ACCESS EXCLUSIVE MODE",
    "DELETE FROM sim_price_fence",
    "SELECT id FROM sim_deployment FOR UPDATE",
    # Its own views: a lock on a view locks the tables under it in the same mode.
    "LOCK TABLE sim_pnl IN SHARE MODE",
    "LOCK TABLE sim_latest_prices IN EXCLUSIVE MODE",
    "SELECT * FROM sim_latest_prices FOR SHARE",
)


@pytest.fixture
async def reader(pg: asyncpg.Connection, db_name: str) -> AsyncIterator[asyncpg.Connection]:
    """A session of the read role, made the way `simctl grant-reader` makes it."""
    async with reader_session(pg, db_name, "lockreader") as conn:
        yield conn


async def test_the_read_role_cannot_stall_a_claim_or_a_run(
    pg: asyncpg.Connection, reader: asyncpg.Connection, env: dict[str, str]
) -> None:
    await seed_due(pg, 4)
    # Whatever advisory locks it can take, it holds (session-level, exclusive).
    for key in OLD_ADVISORY_KEYS:
        assert await reader.fetchval("SELECT pg_try_advisory_lock($1)", key)
    # The engine's locks it cannot take at all (each in a transaction of its own).
    taken = []
    for attempt in ENGINE_LOCK_ATTEMPTS:
        try:
            async with asyncio.timeout(5), reader.transaction():
                await reader.execute(attempt)
        except asyncpg.PostgresError:
            continue  # refused (no privilege), or no such table
        except TimeoutError:
            pass
        taken.append(attempt)
    assert taken == []
    # A transaction of the reader holding what it may (its views) stays open meanwhile.
    hold = reader.transaction()
    await hold.start()
    try:
        await reader.fetch("SELECT * FROM sim_latest_prices")
        claim = simctl(["scheduler", "--once"], {**env, "SIM_BATCH_SIZE": "2"}, timeout=60)
        assert claim.returncode == 0, claim.stderr[-2000:]
        assert await pg.fetchval("SELECT count(*) FROM sim_leases") == 2  # claimed
        run = simctl(["worker", "--burst"], env, timeout=60)
        assert run.returncode == 0, run.stderr[-2000:]
        assert await run_counts(pg) == (4, 4)  # ran
    finally:
        await hold.rollback()


async def test_claims_that_stall_turn_the_schedulers_readiness_and_gauge(
    pg: asyncpg.Connection, settings: Settings, db_url: str
) -> None:
    await seed_due(pg, 2)
    settings = settings.model_copy(update={"sim_claim_stall_s": 1})
    pool = await create_pool(db_url, min_size=1, max_size=2)
    redis = await connect_redis(settings)
    holder = await asyncpg.connect(db_url)
    try:
        scheduler = Scheduler(settings, pool, redis, await load_market_retrying(pool, settings))
        await scheduler.run_pass()
        assert scheduler.claim_stalled() is None
        # Something (a stuck engine process, here a test) holds the claim lock for good.
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT name FROM sim_locks WHERE name = 'claim' FOR UPDATE")
        started = time.monotonic()
        while time.monotonic() - started < 1.5:
            report = await scheduler.run_pass()
            assert report.claimed == 0
            await asyncio.sleep(0.1)
        reason = scheduler.claim_stalled()
        assert reason is not None and "claims stalled" in reason
        assert (REGISTRY.get_sample_value("simengine_claim_age_seconds") or 0) > 1
        await held.rollback()
        await scheduler.run_pass()
        assert scheduler.claim_stalled() is None
        assert (REGISTRY.get_sample_value("simengine_claim_age_seconds") or 99) < 1
    finally:
        with contextlib.suppress(Exception):
            await holder.close()
        await redis.aclose()
        await pool.close()
