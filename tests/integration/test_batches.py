"""Batches in-process against real Postgres: fencing, skips, failures, bisecting, auto-pause,
determinism and the NOTIFY payload."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from engine.market import Market
from simconfig import Settings
from store.db import Conn, create_pool
from store.ledger import reconcile
from store.runs import Claim, claim_due
from store.sqlfiles import query
from tests.support.procs import no_partial_runs, seed_due, simctl, spawn, stop_when_done
from tests.support.services import create_database, drop_database, url_for
from workers.batch import BatchRunner

SLOT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


async def claims_of(conn: Conn) -> list[Claim]:
    rows = await conn.fetch("SELECT id, sim_next_run_at FROM users ORDER BY id")
    return [Claim(r["id"], r["sim_next_run_at"]) for r in rows]


async def test_a_batch_applies_atomically_and_advances_the_slot(
    pg: asyncpg.Connection, runner: BatchRunner
) -> None:
    await seed_due(pg, 300, SLOT)
    outcome = await runner.run(await claims_of(pg))
    assert len(outcome.applied) == 300 and not outcome.skipped and not outcome.failed
    rows = await pg.fetch("SELECT sim_next_run_at, sim_run_count, sim_claimed_until FROM users")
    # The slot is far in the past, so the next one is now() + interval (one catch-up, not a storm).
    now = await pg.fetchval("SELECT now()")
    assert all(
        r["sim_run_count"] == 1 and r["sim_next_run_at"] > now + timedelta(seconds=290)
        for r in rows
    )
    assert await pg.fetchval("SELECT count(*) FROM trades WHERE NOT is_simulated") == 0
    assert await pg.fetchval("SELECT count(*) FROM trades") == outcome.trades > 100
    values = await pg.fetchval(
        "SELECT count(*) FROM users u JOIN portfolio p ON p.user_id = u.id "
        "WHERE u.portfolio_value_usd <> p.usd_value"
    )
    assert values == 0
    await no_partial_runs(pg)
    assert await reconcile(pg) == []


async def test_a_recent_slot_advances_by_exactly_the_interval(
    pg: asyncpg.Connection, runner: BatchRunner
) -> None:
    await seed_due(pg, 5)
    slot = await pg.fetchval(
        "UPDATE users SET sim_next_run_at = now() - interval '10 seconds' RETURNING sim_next_run_at"
    )
    await runner.run(await claims_of(pg))
    nxt = await pg.fetch("SELECT sim_next_run_at FROM users")
    assert {r["sim_next_run_at"] for r in nxt} == {slot + timedelta(seconds=300)}


async def test_duplicate_and_stale_jobs_write_nothing(
    pg: asyncpg.Connection, runner: BatchRunner
) -> None:
    await seed_due(pg, 50, SLOT)
    claims = await claims_of(pg)
    first, again = await asyncio.gather(runner.run(claims), runner.run(claims))
    assert sorted([len(first.applied), len(again.applied)]) == [0, 50]
    assert sorted([len(first.skipped), len(again.skipped)]) == [0, 50]
    stale = await runner.run(claims)
    assert not stale.applied and len(stale.skipped) == 50
    assert await pg.fetchval("SELECT count(*) FROM sim_runs") == 50


@pytest.mark.parametrize(
    "change",
    [
        "sim_paused = true",
        "sim_enabled = false",
        "is_active = false",
        "deleted_at = now()",
    ],
)
async def test_user_changed_after_enqueue_is_skipped_and_untouched(
    pg: asyncpg.Connection, runner: BatchRunner, change: str
) -> None:
    await seed_due(pg, 10, SLOT)
    claims = await claims_of(pg)
    target = claims[3].user_id
    before = await pg.fetchrow("SELECT * FROM users WHERE id = $1", target)
    await pg.execute(f"UPDATE users SET {change} WHERE id = $1", target)  # noqa: S608 (fixed text)
    outcome = await runner.run(claims)
    assert outcome.skipped == [target] and len(outcome.applied) == 9
    after = await pg.fetchrow("SELECT * FROM users WHERE id = $1", target)
    assert after is not None and before is not None
    assert after["sim_next_run_at"] == before["sim_next_run_at"] == SLOT
    assert after["balance_usd"] == before["balance_usd"]
    assert await pg.fetchval("SELECT count(*) FROM sim_runs WHERE user_id = $1", target) == 0


async def test_a_user_the_core_refuses_does_not_stop_the_batch(
    pg: asyncpg.Connection, runner: BatchRunner
) -> None:
    await seed_due(pg, 20, SLOT)
    claims = await claims_of(pg)
    reserved_too_much, bad_params = claims[2].user_id, claims[7].user_id
    # Another service wrote a withdrawal larger than the holding (legacy rows do that): the user
    # still runs and sells none of it. Malformed parameters fail that user alone.
    await pg.execute(
        "INSERT INTO withdrawals (user_id, asset, amount, status) VALUES ($1, 'BTC', 5, 'pending')",
        reserved_too_much,
    )
    await pg.execute(
        'UPDATE users SET sim_params = \'{"max_trades": "many"}\' WHERE id = $1', bad_params
    )
    btc_before = await pg.fetchval(
        "SELECT btc FROM portfolio WHERE user_id = $1", reserved_too_much
    )
    outcome = await runner.run(claims)
    assert outcome.failed == [bad_params]
    assert len(outcome.applied) == 19
    assert reserved_too_much in {user_id for user_id, _run_id in outcome.applied}
    assert not await pg.fetchval(
        "SELECT count(*) FROM trades WHERE user_id = $1 AND asset = 'BTC' AND trade_type = 'sell'",
        reserved_too_much,
    )
    assert (
        await pg.fetchval("SELECT btc FROM portfolio WHERE user_id = $1", reserved_too_much)
        >= btc_before
    )
    rows = await pg.fetch(
        "SELECT id, sim_fail_count, sim_last_error, sim_claimed_until > now() AS backing_off "
        "FROM users WHERE sim_fail_count > 0 ORDER BY id"
    )
    assert [r["id"] for r in rows] == [bad_params]
    assert all(r["backing_off"] and r["sim_last_error"] for r in rows)


async def test_a_database_failure_is_bisected_to_the_one_user_then_auto_paused(
    pg: asyncpg.Connection, db_url: str, settings: Settings
) -> None:
    await seed_due(pg, 40, SLOT)
    claims = await claims_of(pg)
    bad = claims[13].user_id
    await pg.execute(
        f"""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.user_id = {bad} THEN
              RAISE EXCEPTION 'refused by test' USING ERRCODE = 'check_violation'; END IF;
            RETURN NEW; END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON sim_runs FOR EACH ROW EXECUTE FUNCTION refuse();"""
    )
    strict = settings.model_copy(update={"sim_max_failures": 2})
    pool = await create_pool(db_url, max_size=2)
    try:
        runner = BatchRunner(pool, strict, Market(strict.market_params()))
        outcome = await runner.run(claims)
        assert outcome.failed == [bad] and len(outcome.applied) == 39
        again = await runner.run([c for c in claims if c.user_id == bad])
        assert again.failed == [bad]
    finally:
        await pool.close()
    row = await pg.fetchrow(
        "SELECT sim_paused, sim_fail_count, sim_last_error FROM users WHERE id = $1", bad
    )
    assert row is not None and row["sim_paused"] and row["sim_fail_count"] == 2
    assert "refused by test" in row["sim_last_error"]
    audit = await pg.fetch("SELECT admin_key, details FROM admin_audit WHERE action = 'auto_pause'")
    assert [(a["admin_key"], a["details"]["failures"]) for a in audit] == [("engine", 2)]


async def test_every_committed_run_is_notified(
    pg: asyncpg.Connection, runner: BatchRunner, db_url: str
) -> None:
    await seed_due(pg, 30, SLOT)
    listener = await asyncpg.connect(db_url)
    payloads: list[dict[str, object]] = []
    heard_all = asyncio.Event()

    def heard(*args: object) -> None:
        payloads.append(json.loads(str(args[3])))
        if len(payloads) == 30:
            heard_all.set()

    await listener.add_listener("sim_run", heard)
    try:
        outcome = await runner.run(await claims_of(pg))
        await asyncio.wait_for(heard_all.wait(), 10)
    finally:
        await listener.close()
    assert {p["run_id"] for p in payloads} == {run_id for run_id, _ in outcome.applied}
    assert all({"user_id", "run_id", "scheduled_for", "trades_count"} <= p.keys() for p in payloads)


async def test_trades_are_identical_whatever_the_workers_and_batching(
    pg: asyncpg.Connection, db_name: str, settings: Settings, env: dict[str, str]
) -> None:
    """Same seed and rows: one in-process batch of 400, three real worker processes on batches
    of 7, and batches of 1 in reverse order all write the same trades."""
    await seed_due(pg, 400, SLOT)
    await pg.execute("UPDATE users SET sim_strategy = 'momentum' WHERE id % 5 = 0")
    await pg.execute("UPDATE users SET sim_strategy = 'rebalance' WHERE id % 5 = 1")
    await pg.close()
    copies = [create_database(db_name) for _ in range(3)]
    trades_query = (
        "SELECT user_id, trade_type, asset, amount, price_usd, fee_usd, generated_at "
        "FROM trades ORDER BY user_id, id"
    )
    try:
        results = []
        for copy, batch, reverse in ((copies[0], 400, False), (copies[2], 1, True)):
            pool = await create_pool(url_for(copy), max_size=4)
            try:
                runner = BatchRunner(pool, settings, Market(settings.market_params()))
                async with pool.acquire() as conn:
                    claims = await claims_of(conn)
                    if reverse:
                        claims.reverse()
                    chunks = [claims[i : i + batch] for i in range(0, len(claims), batch)]
                    await asyncio.gather(*(runner.run(c) for c in chunks))
                    results.append(await conn.fetch(trades_query))
            finally:
                await pool.close()
        # One scheduler pass enqueues all 400 users (58 jobs of 7; the default queue stops at 32).
        procs_env = {
            **env,
            "DATABASE_URL": url_for(copies[1]),
            "SIM_BATCH_SIZE": "7",
            "SIM_MAX_QUEUED_JOBS": "100",
        }
        assert simctl(["scheduler", "--once"], procs_env).returncode == 0
        workers = [spawn(["worker", "--burst"], procs_env) for _ in range(3)]
        assert [stop_when_done(w) for w in workers] == [0, 0, 0]
        processed = await asyncpg.connect(url_for(copies[1]))
        try:
            assert await processed.fetchval("SELECT count(*) FROM sim_runs") == 400
            results.append(await processed.fetch(trades_query))
        finally:
            await processed.close()
        assert len(results[0]) > 200
        assert results[0] == results[1] == results[2]
    finally:
        for copy in copies:
            drop_database(copy)


def _seq_scanned(node: object) -> set[str]:
    """The relations a JSON plan reads with a Seq Scan."""
    if isinstance(node, list):
        return set().union(*(_seq_scanned(n) for n in node))
    if not isinstance(node, dict):
        return set()
    found = {node["Relation Name"]} if node.get("Node Type") == "Seq Scan" else set()
    for value in node.values():
        if isinstance(value, list | dict):
            found |= _seq_scanned(value)
    return found


async def test_the_claim_uses_the_due_index_on_200k_users(pg: asyncpg.Connection) -> None:
    await seed_due(pg, 200_000, holdings=False)
    await pg.execute(
        "UPDATE users SET sim_next_run_at = now() + interval '1 hour' WHERE id % 100 <> 0"
    )
    await pg.execute("ANALYZE users")
    for name in ("claim_due", "materialize_null_slots"):
        args = (200, 60.0, 200) if name == "claim_due" else (200,)
        plan = await pg.fetchval("EXPLAIN (FORMAT JSON) " + query(name), *args)
        text = json.dumps(plan)
        assert "idx_users_sim_due" in text, name
        # The only sequential scans allowed are of the live leases (a few rows per queued
        # batch) and of sim_control's one row (the global switch of claims, migration 0012).
        assert _seq_scanned(json.loads(plan) if isinstance(plan, str) else plan) <= {
            "sim_leases",
            "sim_control",
        }, name
    lease = await claim_due(pg, 200, 60)
    assert len(lease.claims) == 200


async def test_open_withdrawals_reserve_crypto_of_their_own_user_only(
    pg: asyncpg.Connection, runner: BatchRunner
) -> None:
    # Even users hold 0.05 BTC and 1.5 ETH; every user's strategy sells all of both.
    await seed_due(pg, 40, SLOT)
    await pg.execute(
        """UPDATE users SET sim_strategy = 'rebalance',
                  sim_params = '{"weights": {"BTC": "0", "ETH": "0", "USDC": "1"}, "band": "0"}'"""
    )
    reserving = [4, 10, 22, 30, 38]  # scattered through the batch, so a mix-up would show
    await pg.execute(
        """INSERT INTO withdrawals (user_id, asset, amount, address, status)
           SELECT id, a, amt, 'addr', st FROM unnest($1::bigint[]) AS id,
                  (VALUES ('BTC', 0.04, 'pending'), ('ETH', 1.0, 'processing'),
                          ('ETH', 0.5, 'failed')) v(a, amt, st)""",
        reserving,
    )
    outcome = await runner.run(await claims_of(pg))
    assert len(outcome.applied) == 40 and not outcome.failed
    rows = {
        r["user_id"]: (r["btc"], r["eth"])
        for r in await pg.fetch("SELECT user_id, btc, eth FROM portfolio WHERE user_id % 2 = 0")
    }
    for uid, (btc, eth) in rows.items():
        if uid in reserving:
            # Exactly what open withdrawals reserve is left; a failed one reserves nothing.
            assert (btc, eth) == (Decimal("0.04"), Decimal("1.0")), uid
        else:
            assert (btc, eth) == (0, 0), uid
    assert await reconcile(pg) == []


async def test_a_claim_is_exact_to_the_microsecond_and_in_id_order(pg: asyncpg.Connection) -> None:
    await seed_due(pg, 50, holdings=False)
    odd = datetime(2026, 11, 1, 12, 0, 0, 123457, tzinfo=UTC)
    await pg.execute("UPDATE users SET sim_next_run_at = $1 WHERE id % 3 = 0", odd)
    expected = {
        r["id"]: r["sim_next_run_at"]
        for r in await pg.fetch("SELECT id, sim_next_run_at FROM users")
    }
    lease = await claim_due(pg, 50, 60)
    assert lease.user_ids == sorted(expected)
    assert {c.user_id: c.slot for c in lease.claims} == expected
    assert lease.until is not None and lease.until > datetime.now(UTC)
    again = await claim_due(pg, 50, 60)
    assert again.user_ids == [] and again.claims == []  # leased: not claimed twice


async def test_a_claim_writes_one_lease_row_per_batch_and_no_user_row(
    pg: asyncpg.Connection, runner: BatchRunner
) -> None:
    # A lease per user would write a second users row version per run: a claim writes one
    # sim_leases row per batch instead, and the batch's commit deletes it.
    await seed_due(pg, 1_000, SLOT, holdings=False)
    await pg.execute("VACUUM users")

    async def user_updates() -> int:
        await pg.execute("SELECT pg_stat_force_next_flush()")
        await pg.execute("SELECT 1")  # the flush happens at the end of the next transaction
        await pg.execute("SELECT pg_stat_clear_snapshot()")
        n: int = await pg.fetchval(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'users'"
        )
        return n

    before = await user_updates()
    lease = await claim_due(pg, 1_000, 60, batch_size=200)
    assert len(lease.user_ids) == 1_000 and len(lease.batches) == 5
    assert await user_updates() == before
    assert await pg.fetchval("SELECT count(*) FROM sim_leases") == 5
    for n, batch in enumerate(lease.batches, 1):
        outcome = await runner.run(batch.claims, batch.lease_id)
        assert len(outcome.applied) == 200
        assert await pg.fetchval("SELECT count(*) FROM sim_leases") == 5 - n
