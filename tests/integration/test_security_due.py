"""Runs happen when due, and only then: a job for a slot that has not come (forged on Redis by
whoever can write there, or replayed) writes nothing, and no model price for a tick later than
now is written or shown, whatever a process's clock says."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import asyncpg
import pytest
from arq.constants import job_key_prefix
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from engine.accounting import slot_to_us
from engine.market import Market
from simconfig import Settings
from store.db import create_pool
from store.ledger import reconcile
from store.market import change_market, describe, load_market
from store.ticker import write_ticks
from tests.support.procs import no_partial_runs, seed_due, simctl
from workers.batch import BatchRunner
from workers.jobs import run_batch

pytestmark = pytest.mark.timeout(180)


async def _deployment(pg: asyncpg.Connection) -> dict[str, str]:
    """The job keyword naming this database (a forger can read it: it is no secret)."""
    if await pg.fetchval("SELECT to_regclass('sim_deployment') IS NULL"):
        return {}
    return {"deployment": await pg.fetchval("SELECT id::text FROM sim_deployment")}


async def _forge(redis: Redis, queue: str, job_id: str, record: dict[str, object]) -> None:
    """A job written straight into arq's keys, in its JSON shape, as an attacker would."""
    await redis.set(job_key_prefix + job_id, json.dumps(record))
    await redis.zadd(queue, {job_id: int(time.time() * 1000)})


async def _future_prices(pg: asyncpg.Connection) -> int:
    n: int = await pg.fetchval("SELECT count(*) FROM price_history WHERE at > now()")
    return n


async def test_a_forged_job_for_slots_days_ahead_runs_nothing_through_a_real_worker(
    pg: asyncpg.Connection, env: dict[str, str], redis_url: str
) -> None:
    await seed_due(pg, 3)
    victim: int = await pg.fetchval("SELECT min(id) FROM users")
    await pg.execute(
        "UPDATE users SET sim_next_run_at = date_trunc('second', now()) + interval '3 days' "
        "WHERE id = $1",
        victim,
    )
    row = await pg.fetchrow(
        "SELECT sim_next_run_at, sim_interval_s FROM users WHERE id = $1", victim
    )
    assert row is not None
    next_at, interval = row["sim_next_run_at"], timedelta(seconds=row["sim_interval_s"])
    queue = env["SIM_QUEUE_NAME"]
    kwargs = await _deployment(pg)
    redis = Redis.from_url(redis_url)
    try:
        # The user's next slot, and the ones after it (what a run of the first would chain to).
        for i in range(3):
            slot_us = slot_to_us(next_at + i * interval)
            await _forge(
                redis,
                queue,
                f"forged-{i}",
                {
                    "t": 1,
                    "f": "run_batch",
                    "a": [[victim], [slot_us]],
                    "k": kwargs,
                    "et": int(time.time() * 1000),
                },
            )
        worker = simctl(["worker", "--burst"], env)
        assert worker.returncode == 0, worker.stderr[-2000:]
    finally:
        await redis.aclose()
    assert await pg.fetchval("SELECT count(*) FROM sim_runs WHERE user_id = $1", victim) == 0
    assert await pg.fetchval("SELECT sim_next_run_at FROM users WHERE id = $1", victim) == next_at
    events = [json.loads(line) for line in worker.stderr.splitlines() if line.startswith("{")]
    refused = [e for e in events if e["event"] == "run.refused_not_due"]
    assert [e["user_id"] for e in refused] == [victim] * 3
    assert {e["level"] for e in refused} == {"warning"}
    # The others run as usual; nothing priced a tick that has not come.
    assert simctl(["scheduler", "--once"], env).returncode == 0
    assert simctl(["worker", "--burst"], env).returncode == 0
    assert await pg.fetchval("SELECT count(*) FROM sim_runs") == 2
    assert await _future_prices(pg) == 0
    await no_partial_runs(pg)
    assert await reconcile(pg) == []


async def test_a_refused_slot_is_counted_and_writes_nothing(
    pg: asyncpg.Connection, db_url: str, settings: Settings
) -> None:
    await seed_due(pg, 2)
    uid: int = await pg.fetchval("SELECT min(id) FROM users")
    slot = await pg.fetchval(
        "UPDATE users SET sim_next_run_at = now() + interval '1 hour' WHERE id = $1 "
        "RETURNING sim_next_run_at",
        uid,
    )
    before = REGISTRY.get_sample_value("simengine_runs_refused_total") or 0.0
    pool = await create_pool(db_url, max_size=2)
    try:
        deployment = (await _deployment(pg)).get("deployment")
        ctx = {
            "runner": BatchRunner(pool, settings, Market(settings.market_params())),
            "job_id": "replayed",
            "deployment": deployment,
            "foreign_seen": {},
        }
        result = await run_batch(ctx, [uid], [slot_to_us(slot)], None, deployment)
    finally:
        await pool.close()
    assert result["applied"] == 0
    assert REGISTRY.get_sample_value("simengine_runs_refused_total") == before + 1
    assert await pg.fetchval("SELECT count(*) FROM sim_runs") == 0
    assert await pg.fetchval("SELECT sim_next_run_at FROM users WHERE id = $1", uid) == slot
    assert await _future_prices(pg) == 0


async def test_the_ticker_never_writes_a_tick_later_than_now_whatever_its_clock(
    pg: asyncpg.Connection, settings: Settings
) -> None:
    market = await load_market(pg, settings)
    now = await pg.fetchval("SELECT now()")
    # A host whose clock runs an hour (and a day) ahead of the database's.
    for ahead in (timedelta(hours=1), timedelta(days=1)):
        await write_ticks(pg, market, now + ahead)
    assert await _future_prices(pg) == 0
    assert await pg.fetchval("SELECT count(*) FROM price_history") == 6  # the current tick


async def test_market_show_and_change_show_no_price_of_a_tick_to_come(
    pg: asyncpg.Connection, settings: Settings
) -> None:
    changed = await change_market(
        pg, "test", volatility={}, reseed=True, lead_s=3600, reason="rotation"
    )
    now = await pg.fetchval("SELECT now()")
    market = await load_market(pg, settings.model_copy(update={"sim_seed": None}))
    now_tick = market.tick_of(now)

    def prices_shown(entry: dict[str, object]) -> list[object]:
        assets = entry["assets"]
        assert isinstance(assets, dict)
        return [a["start_price_usd"] for a in assets.values() if not a["stable"]]

    # The new version starts an hour ahead: its volatile start prices are that tick's prices.
    assert prices_shown(changed) == [None] * 4
    audit = await pg.fetchval("SELECT details FROM admin_audit WHERE action = 'market_change'")
    assert prices_shown(audit if isinstance(audit, dict) else json.loads(audit)) == [None] * 4
    shown = await describe(pg)
    assert prices_shown(shown[1]) == [None] * 4
    assert None not in prices_shown(shown[0])  # version 1 began long ago
    # What is shown instead: the prices at the tick that has begun.
    prices_now = changed["prices_now"]
    assert prices_now["at"] == market.tick_time(now_tick).isoformat()
    assert prices_now["prices_usd"]["BTC"] == str(market.price("BTC", now_tick))


async def test_the_audit_names_a_run_ahead_of_its_slot_and_a_price_ahead_of_now(
    pg: asyncpg.Connection,
) -> None:
    from store.audit import audit_time

    await seed_due(pg, 1)
    uid: int = await pg.fetchval("SELECT min(id) FROM users")
    assert await audit_time(pg) == []
    # What an early run and an early price leave behind (written here by hand).
    run_id: int = await pg.fetchval(
        "INSERT INTO sim_runs (user_id, scheduled_for, started_at, finished_at, outcome, "
        "trades_count) VALUES ($1, now() + interval '2 days', now(), now(), 'applied', 0) "
        "RETURNING id",
        uid,
    )
    await pg.execute(
        "INSERT INTO price_history (asset, at, price_usd, source) "
        "VALUES ('BTC', date_trunc('minute', now()) + interval '1 day', 1, 'model')"
    )
    found = await audit_time(pg)
    assert len(found) == 2
    assert f"run {run_id} of user {uid}" in found[0] and "later than its commit" in found[0]
    assert found[1].startswith("BTC price at") and "later than now" in found[1]
    assert await audit_time(pg, uid) == found[:1]
