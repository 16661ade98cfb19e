"""How a scheduler sizes its claims: every claim walks the due users that are still leased, so
a scheduler that keeps claiming does it in as few statements as it can, while the first claim
of a burst stays small (its first job is queued a few milliseconds after the slot)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from redis.asyncio import Redis

from simconfig import Settings
from store.db import create_pool
from store.market import load_market_retrying
from tests.support.procs import seed_due
from workers.enqueue import connect_redis
from workers.scheduler import Scheduler

pytestmark = pytest.mark.timeout(120)


async def _claims(pg: asyncpg.Connection) -> list[int]:
    """Users leased by each claim statement so far, in order (a claim's lease rows share its
    transaction's now(), and their ids grow)."""
    rows = await pg.fetch(
        "SELECT sum(cardinality(user_ids))::int AS users FROM sim_leases "
        "GROUP BY created_at ORDER BY min(id)"
    )
    return [r["users"] for r in rows]


async def _make_due(pg: asyncpg.Connection, first: int, n: int) -> None:
    await pg.execute(
        "UPDATE users SET sim_next_run_at = now() - interval '1 minute' "
        "WHERE id >= $1 AND id < $1 + $2",
        first,
        n,
    )


@asynccontextmanager
async def _scheduler(settings: Settings, max_queued_jobs: int) -> AsyncIterator[Scheduler]:
    """An in-process scheduler claiming batches of 10 users under leases of an hour (none ends,
    giving its users back, while a test runs), with its own pool and Redis."""
    settings = settings.model_copy(
        update={"sim_batch_size": 10, "sim_max_queued_jobs": max_queued_jobs, "sim_lease_s": 3600}
    )
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    redis = await connect_redis(settings)
    try:
        yield Scheduler(settings, pool, redis, await load_market_retrying(pool, settings))
    finally:
        await redis.aclose()
        await pool.close()


@pytest.fixture
async def parked(pg: asyncpg.Connection) -> int:
    """300 users, none due yet; returns the first id."""
    await seed_due(pg, 300, holdings=False)
    await pg.execute("UPDATE users SET sim_next_run_at = now() + interval '1 hour'")
    first: int = await pg.fetchval("SELECT min(id) FROM users")
    return first


async def test_claims_grow_within_a_pass_and_the_next_pass_starts_at_the_pace_seen(
    pg: asyncpg.Connection, settings: Settings, parked: int
) -> None:
    async with _scheduler(settings, max_queued_jobs=1000) as scheduler:
        # A burst from idle: claims of 1, 2 and 4 batches (and a fourth that finds nobody).
        await _make_due(pg, parked, 70)
        assert (await scheduler.run_pass()).claimed == 70
        assert await _claims(pg) == [10, 20, 40]

        # Users still coming due: the next pass starts at twice the last one's 7 batches, so
        # 130 users take one claim, not four.
        await _make_due(pg, parked + 70, 130)
        assert (await scheduler.run_pass()).claimed == 130
        assert await _claims(pg) == [10, 20, 40, 130]

        # A trickle (one user a pass) keeps the first claim small: the next burst ramps up
        # from 2 batches, it does not start with a claim of thousands.
        await _make_due(pg, parked + 200, 1)
        assert (await scheduler.run_pass()).claimed == 1
        await _make_due(pg, parked + 201, 60)
        assert (await scheduler.run_pass()).claimed == 60
        assert await _claims(pg) == [10, 20, 40, 130, 1, 20, 40]

        # A pass that found nobody: the next burst starts at one batch again.
        assert (await scheduler.run_pass()).claimed == 0
        await _make_due(pg, parked + 261, 30)
        assert (await scheduler.run_pass()).claimed == 30
        assert await _claims(pg) == [10, 20, 40, 130, 1, 20, 40, 10, 20]


async def test_a_pass_held_back_by_a_full_queue_keeps_the_claim_size(
    pg: asyncpg.Connection, settings: Settings, parked: int, redis_url: str
) -> None:
    async with _scheduler(settings, max_queued_jobs=3) as scheduler:
        await _make_due(pg, parked, 200)
        # Room for 3 jobs (no worker runs): claims of 1 and 2 batches fill it.
        assert (await scheduler.run_pass()).claimed == 30
        # Queue full: nothing looked at, nothing learnt.
        assert (await scheduler.run_pass()).claimed == 0
        # The queue empties (here: flushed); the next pass claims at the pace seen before the
        # full queue (3 batches, one claim), not from one batch again.
        flushing = Redis.from_url(redis_url)
        try:
            await flushing.delete(scheduler.settings.sim_queue_name)
        finally:
            await flushing.aclose()
        assert (await scheduler.run_pass()).claimed == 30
        assert await _claims(pg) == [10, 20, 30]
