"""Cancelling a pending market change (store.market.cancel_change, `simctl market cancel`):
a worker that loaded the version before the cancel never prices a tick with it (the engine's
own batch runner and ticker, on a real Postgres), the cancel waits for the batches in flight,
and every refusal leaves the stored market and the audit as they were."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from engine.assets import ASSETS
from simconfig import Settings
from store.db import connect, create_pool
from store.errors import NotFound, Refused
from store.market import cancel_change, change_market, load_market
from store.prices import audit_prices
from store.runs import begin_batch
from store.ticker import write_ticks
from tests.acceptance.test_cli import one_line_refusal
from tests.integration.test_batches import claims_of
from tests.support.keys import key_args
from tests.support.procs import seed_due, simctl
from workers.batch import BatchRunner

KEY = "market cancel key"
FINGERPRINT = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()[:12]


def _settings(db_url: str) -> Settings:
    # No market setting: a reseeded version must not look like a mismatch.
    return Settings(_env_file=None, database_url=db_url)


async def _wait_for_db_time(pg: asyncpg.Connection, at: datetime) -> None:
    """Until Postgres's clock reaches `at` (a few seconds at most in these tests)."""
    for _ in range(300):
        if await pg.fetchval("SELECT clock_timestamp() >= $1", at):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"Postgres's clock did not reach {at}")


async def test_a_worker_that_loaded_a_change_never_prices_a_tick_with_it_once_cancelled(
    pg: asyncpg.Connection, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One-second ticks (a fresh database, nothing priced yet) so the version's first tick comes
    # within seconds; a lead time that short is allowed here only.
    await pg.execute("UPDATE sim_market SET tick_s = 1")
    monkeypatch.setattr("store.market.MIN_LEAD_S", 1)
    settings = _settings(db_url)
    await seed_due(pg, 30)
    changed = await change_market(
        pg, FINGERPRINT, volatility={"BTC": Decimal("2")}, reseed=True, lead_s=4, reason="t"
    )
    # What a worker and a scheduler hold from their start: version 2 included.
    loaded = await load_market(pg, settings)
    assert loaded.version == 2
    pool = await create_pool(db_url, max_size=2)
    try:
        runner = BatchRunner(pool, settings, loaded)
        await cancel_change(pg, FINGERPRINT, 2, "wrong volatility", margin_s=1)
        # Version 2's first tick starts from version 1's prices there; its second tick is
        # the first one version 2 prices differently.
        slot = datetime.fromisoformat(changed["effective_from"]) + timedelta(seconds=1)
        await _wait_for_db_time(pg, slot + timedelta(milliseconds=10))
        await pg.execute("UPDATE users SET sim_next_run_at = $1", slot)
        outcome = await runner.run(await claims_of(pg))
        assert len(outcome.applied) == 30 and not outcome.failed
        # The ticker's path, with the market it loaded before the cancel: the next tick.
        later = slot + timedelta(seconds=1)
        await _wait_for_db_time(pg, later)
        assert await write_ticks(pg, loaded, at=later) == len(ASSETS)
    finally:
        await pool.close()
    v1 = await load_market(pg, settings)
    assert v1.version == 1 and runner.market.version == 1
    tick = v1.tick_of(slot)
    # The test tells the two apart: version 2 prices these ticks differently.
    assert loaded.price("BTC", tick) != v1.price("BTC", tick)
    assert loaded.price("BTC", tick + 1) != v1.price("BTC", tick + 1)
    for at, t in ((slot, tick), (later, tick + 1)):
        rows = await pg.fetch("SELECT asset, price_usd FROM price_history WHERE at = $1", at)
        stored = {r["asset"]: r["price_usd"] for r in rows}
        assert stored == {a: v1.price(a, t) for a in ASSETS}
    assert await pg.fetchval("SELECT count(*) FROM trades WHERE generated_at = $1", slot) > 0
    # Every fill and every portfolio value is version 1's stored price (with the slippage).
    assert await audit_prices(pg, settings.sim_slippage_bps) == []


async def test_the_cancel_waits_for_the_batches_in_flight(
    pg: asyncpg.Connection, db_url: str
) -> None:
    await change_market(pg, FINGERPRINT, volatility={}, reseed=True, lead_s=3600, reason="t")
    batch = await connect(db_url)
    try:
        tx = batch.transaction()
        await tx.start()
        await begin_batch(batch)  # a batch in flight: it read version 2
        cancel = asyncio.create_task(cancel_change(pg, FINGERPRINT, 2, "t"))
        pid = pg.get_server_pid()
        for _ in range(400):
            waiting = await batch.fetchval(
                "SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted", pid
            )
            if waiting or cancel.done():
                break
            await asyncio.sleep(0.025)
        assert waiting and not cancel.done()  # held off by the batch's side of the fence
        assert (
            await batch.fetchval("SELECT count(*) FROM sim_market WHERE cancelled_at IS NOT NULL")
            == 0
        )
        await tx.commit()
        result = await asyncio.wait_for(cancel, 30)
    finally:
        await batch.close()
    assert result["version"] == 2
    async with pg.transaction():
        assert (await begin_batch(pg)).market_version == 1  # what the next batch reads


async def test_refusals_change_nothing(pg: asyncpg.Connection, db_url: str) -> None:
    await change_market(pg, FINGERPRINT, volatility={}, reseed=True, lead_s=3600, reason="a")
    await change_market(pg, FINGERPRINT, volatility={}, reseed=True, lead_s=7200, reason="b")
    before = await pg.fetch("SELECT * FROM sim_market ORDER BY version")
    audited = await pg.fetchval("SELECT count(*) FROM admin_audit")
    with pytest.raises(NotFound, match="no market version 9"):
        await cancel_change(pg, FINGERPRINT, 9, "x")
    with pytest.raises(Refused, match="version 1 is the market's definition"):
        await cancel_change(pg, FINGERPRINT, 1, "x")
    with pytest.raises(Refused, match="cancel version 3 first"):
        await cancel_change(pg, FINGERPRINT, 2, "x")
    # A version whose first tick has begun, and one starting within the margin (60-s ticks:
    # the next tick starts within a minute).
    now_tick = (await load_market(pg, _settings(db_url))).tick_of(await pg.fetchval("SELECT now()"))
    for tick, said in ((now_tick, "is in force since"), (now_tick + 1, "starts at")):
        await pg.execute("UPDATE sim_market SET effective_tick = $1 WHERE version = 2", tick - 5)
        await pg.execute("UPDATE sim_market SET effective_tick = $1 WHERE version = 3", tick)
        with pytest.raises(Refused, match=f"version 3 {said} .*more than 60 s from now"):
            await cancel_change(pg, FINGERPRINT, 3, "x")
    for v in (3, 2):
        await pg.execute(
            "UPDATE sim_market SET effective_tick = $1 WHERE version = $2",
            before[v - 1]["effective_tick"],
            v,
        )
    assert await pg.fetch("SELECT * FROM sim_market ORDER BY version") == before
    assert await pg.fetchval("SELECT count(*) FROM admin_audit") == audited
    # Newest first: 3, then 2; then neither again.
    await cancel_change(pg, FINGERPRINT, 3, "x")
    await cancel_change(pg, FINGERPRINT, 2, "x")
    with pytest.raises(Refused, match="already cancelled"):
        await cancel_change(pg, FINGERPRINT, 2, "x")


async def test_a_change_after_a_cancel_takes_a_new_number_and_may_take_the_same_tick(
    pg: asyncpg.Connection, db_url: str
) -> None:
    first = await change_market(
        pg, FINGERPRINT, volatility={}, reseed=True, lead_s=3600, reason="a"
    )
    await cancel_change(pg, FINGERPRINT, 2, "x")
    again = await change_market(
        pg, FINGERPRINT, volatility={"ETH": Decimal("0.9")}, reseed=False, lead_s=3600, reason="b"
    )
    assert again["version"] == 3
    market = await load_market(pg, _settings(db_url))
    assert market.version == 3
    rows = await pg.fetch(
        "SELECT version, effective_tick, cancelled_by FROM sim_market ORDER BY version"
    )
    assert [(r["version"], r["cancelled_by"]) for r in rows] == [
        (1, None),
        (2, FINGERPRINT),
        (3, None),
    ]
    # Version 3 builds on version 1 (the cancelled seed is not carried over).
    seeds = {
        r["version"]: r["seed"] for r in await pg.fetch("SELECT version, seed FROM sim_market")
    }
    assert seeds[3] == seeds[1] != seeds[2]
    del first


def test_simctl_market_cancel_is_audited_and_refuses_in_one_line(
    env: dict[str, str], db_url: str
) -> None:
    admin = {k: v for k, v in env.items() if k != "SIM_SEED"}
    admin["SIM_ADMIN_KEYS_SHA256"] = hashlib.sha256(KEY.encode()).hexdigest()
    change = simctl(["market", "change", "--reseed", "--reason", "rotation", *key_args(KEY)], admin)
    assert change.returncode == 0, change.stderr
    no_key = simctl(["market", "cancel", "2", "--reason", "x"], admin)
    assert no_key.returncode == 1 and "admin key" in one_line_refusal(no_key.stderr)
    no_reason = simctl(["market", "cancel", "2", *key_args(KEY)], admin)
    assert no_reason.returncode == 2 and "--reason" in one_line_refusal(no_reason.stderr)
    for version, said in (("7", "no market version 7"), ("1", "version 1 is the market's")):
        refused = simctl(["market", "cancel", version, "--reason", "x", *key_args(KEY)], admin)
        assert refused.returncode == 1 and said in one_line_refusal(refused.stderr)
    done = simctl(["market", "cancel", "2", "--reason", "wrong seed", *key_args(KEY)], admin)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == 2
    again = simctl(["market", "cancel", "2", "--reason", "x", *key_args(KEY)], admin)
    assert again.returncode == 1 and "already cancelled" in one_line_refusal(again.stderr)
    shown = json.loads(simctl(["market", "show", "--json"], admin).stdout)["versions"]
    assert [(v["version"], v["cancelled_by"]) for v in shown] == [(1, None), (2, FINGERPRINT)]

    async def audit_rows() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(db_url)
        try:
            return await conn.fetch(
                "SELECT admin_key, details FROM admin_audit WHERE action = 'market_cancel'"
            )
        finally:
            await conn.close()

    rows = asyncio.run(audit_rows())
    assert len(rows) == 1 and rows[0]["admin_key"] == FINGERPRINT
    details = (
        json.loads(rows[0]["details"])
        if isinstance(rows[0]["details"], str)
        else rows[0]["details"]
    )
    assert details["reason"] == "wrong seed" and details["newest_version_after"] == 1
    assert KEY not in done.stdout + done.stderr
