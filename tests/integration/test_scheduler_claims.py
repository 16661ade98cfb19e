"""How a scheduler sizes its claims: every claim walks the due users that are still leased, so
a scheduler that keeps claiming does it in as few statements as it can, while the first claim
of a burst stays small (its first job is queued a few milliseconds after the slot)."""

from __future__ import annotations

import asyncpg
import pytest

from simconfig import Settings
from store.db import create_pool
from store.market import load_market_retrying
from tests.support.procs import seed_due
from workers.enqueue import connect_redis
from workers.scheduler import Scheduler

pytestmark = pytest.mark.timeout(120)


async def _claims(pg: asyncpg.Connection) -> list[int]:
    """Users leased by each claim statement so far, oldest first (a claim's lease rows share
    its transaction's now())."""
    rows = await pg.fetch(
        "SELECT sum(cardinality(user_ids))::int AS users FROM sim_leases "
        "GROUP BY created_at ORDER BY created_at"
    )
    return [r["users"] for r in rows]


async def _make_due(pg: asyncpg.Connection, ids: range) -> None:
    await pg.execute(
        "UPDATE users SET sim_next_run_at = now() - interval '1 minute' WHERE id BETWEEN $1 AND $2",
        ids.start,
        ids.stop - 1,
    )


async def test_claims_grow_within_a_pass_and_keep_their_size_while_users_keep_coming_due(
    pg: asyncpg.Connection, settings: Settings
) -> None:
    await seed_due(pg, 300, holdings=False)
    await pg.execute("UPDATE users SET sim_next_run_at = now() + interval '1 hour'")
    first = await pg.fetchval("SELECT min(id) FROM users")
    settings = settings.model_copy(update={"sim_batch_size": 10, "sim_max_queued_jobs": 1000})
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    redis = await connect_redis(settings)
    try:
        scheduler = Scheduler(settings, pool, redis, await load_market_retrying(pool, settings))

        # A burst from idle: claims of 1, 2 and 4 batches.
        await _make_due(pg, range(first, first + 70))
        assert (await scheduler.run_pass()).claimed == 70
        assert await _claims(pg) == [10, 20, 40]

        # Users still coming due: the next pass goes on at the size reached (16 batches after
        # the pass's last, empty claim of 8), so 130 users take one claim, not four.
        await _make_due(pg, range(first + 70, first + 200))
        assert (await scheduler.run_pass()).claimed == 130
        assert (await _claims(pg))[3:] == [130]

        # A pass that found nobody due ends the burst: the next one starts small again.
        assert (await scheduler.run_pass()).claimed == 0
        await _make_due(pg, range(first + 200, first + 230))
        assert (await scheduler.run_pass()).claimed == 30
        assert (await _claims(pg))[4:] == [10, 20]
    finally:
        await redis.aclose()
        await pool.close()
