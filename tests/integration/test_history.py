"""Checkpoints and reconcile from them, against real Postgres and real engine runs: a window's
totals and hashes, the rows since, tampering named (through the trigger and behind it), exact
while runs commit meanwhile, and the scheduler taking them on its own, one at a time."""

from __future__ import annotations

import json

import asyncpg
import pytest

from store import history
from store.ledger import reconcile as oracle
from store.runs import Claim
from tests.support.procs import seed_due, simctl, spawn, stop, wait_until
from workers.batch import BatchRunner

pytestmark = pytest.mark.timeout(240)


async def run_round(pg: asyncpg.Connection, runner: BatchRunner) -> int:
    """Every user due a minute ago, run once: the number of runs applied."""
    rows = await pg.fetch(
        "UPDATE users SET sim_next_run_at = now() - interval '1 minute' "
        "RETURNING id, sim_next_run_at"
    )
    outcome = await runner.run(sorted(Claim(r["id"], r["sim_next_run_at"]) for r in rows))
    return len(outcome.applied)


def json_of(result: object) -> dict[str, object]:
    out = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert isinstance(out, dict)
    return out


async def test_reconcile_judges_from_the_checkpoint_and_the_rows_since(
    pg: asyncpg.Connection, runner: BatchRunner, env: dict[str, str]
) -> None:
    await seed_due(pg, 40)
    assert await run_round(pg, runner) == 40
    taken = simctl(["checkpoint", "--json"], env)
    assert taken.returncode == 0, taken.stderr
    cp = json_of(taken)
    trades = await pg.fetchval("SELECT count(*) FROM trades WHERE sim_run_id IS NOT NULL")
    assert cp["state"] == "verified" and cp["rows"] == {
        "trades": trades,
        "transactions": trades,
        "sim_runs": 40,
    }
    stored = await pg.fetchrow("SELECT * FROM sim_checkpoints WHERE id = $1", cp["id"])
    assert stored is not None
    assert stored["chain_hash"] == cp["chain_hash"] and stored["trades_rows"] == trades
    # Each user's totals are what its rows say.
    totals = await pg.fetchval(
        "SELECT sum(usd) FROM sim_checkpoint_users WHERE checkpoint_id = $1", cp["id"]
    )
    assert totals == await pg.fetchval(
        "SELECT sum(amount) FROM transactions WHERE sim_run_id IS NOT NULL"
    )

    assert await run_round(pg, runner) == 40
    judged = simctl(["reconcile", "--json"], env)
    assert judged.returncode == 0, judged.stdout + judged.stderr
    report = json_of(judged)
    assert report["clean"] and report["from_checkpoint"] == cp["id"]
    assert report["rows_since"]["sim_runs"] == 40  # type: ignore[index]
    assert await oracle(pg) == []  # the views' reconcile agrees

    # A balance changed by hand after the checkpoint is named.
    victim = await pg.fetchval("SELECT min(id) FROM users")
    await pg.execute("UPDATE users SET balance_usd = balance_usd + 1 WHERE id = $1", victim)
    judged = simctl(["reconcile"], env)
    assert judged.returncode == 1
    assert f"user {victim}: balance_usd expected" in judged.stdout


async def test_a_tampered_row_is_named_with_its_table_and_checkpoint(
    pg: asyncpg.Connection, runner: BatchRunner, env: dict[str, str]
) -> None:
    await seed_due(pg, 30)
    await run_round(pg, runner)
    assert simctl(["checkpoint"], env).returncode == 0
    first = await pg.fetchval("SELECT max(id) FROM sim_checkpoints")
    await run_round(pg, runner)
    assert simctl(["checkpoint"], env).returncode == 0
    row = await pg.fetchval("SELECT min(id) FROM trades WHERE sim_run_id IS NOT NULL")
    await pg.execute("UPDATE trades SET amount = amount + 1 WHERE id = $1", row)

    taken = simctl(["checkpoint"], env)
    assert taken.returncode == 1
    assert f"trades row {row} in the window of checkpoint {first}: update" in taken.stdout
    assert await pg.fetchval("SELECT state FROM sim_checkpoints ORDER BY id DESC LIMIT 1") == (
        "failed"
    )
    full = simctl(["reconcile", "--full"], env)
    assert full.returncode == 1
    assert f"checkpoint {first}: trades row(s) {row} changed or deleted" in full.stdout


async def test_a_row_deleted_behind_the_trigger_is_found_by_its_blocks_hash(
    pg: asyncpg.Connection, runner: BatchRunner, env: dict[str, str]
) -> None:
    await seed_due(pg, 30)
    await run_round(pg, runner)
    assert simctl(["checkpoint"], env).returncode == 0
    found = await pg.fetchrow(
        "SELECT id, user_id FROM transactions WHERE sim_run_id IS NOT NULL ORDER BY id LIMIT 1"
    )
    assert found is not None
    row, user = found["id"], found["user_id"]
    async with pg.transaction():  # the owner, going around the record
        await pg.execute("ALTER TABLE transactions DISABLE TRIGGER sim_transactions_deleted")
        await pg.execute("DELETE FROM transactions WHERE id = $1", row)
        await pg.execute("ALTER TABLE transactions ENABLE TRIGGER sim_transactions_deleted")
    assert await pg.fetchval("SELECT count(*) FROM sim_history_changes") == 0
    full = simctl(["reconcile", "--full"], env)
    assert full.returncode == 1
    assert "checkpoint 1: transactions a row with id in " in full.stdout
    assert f"user {user}: balance_usd expected" in full.stdout


async def test_chunked_checkpoints_and_reconciles_stay_exact_while_runs_commit(
    pg: asyncpg.Connection, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny chunks: many short transactions, each standing on its own, while a real scheduler
    # and worker commit runs between them.
    monkeypatch.setattr(history, "BLOCK", 8)
    monkeypatch.setattr(history, "CHUNK_IDS", 16)
    monkeypatch.setattr(history, "USER_CHUNK", 3)
    await seed_due(pg, 40)
    await pg.execute("UPDATE users SET sim_interval_s = 1")
    busy = {**env, "SIM_CHECKPOINT_INTERVAL_S": "0", "SIM_BATCH_SIZE": "5"}
    procs = [spawn(["scheduler"], busy), spawn(["worker"], busy)]
    try:

        async def running() -> bool:
            return bool(await pg.fetchval("SELECT count(*) > 80 FROM sim_runs"))

        await wait_until(running, 60, "runs to flow")
        conn = await asyncpg.connect(env["DATABASE_URL"])
        try:
            before = await pg.fetchval("SELECT count(*) FROM sim_runs")
            for _ in range(4):
                cp = await history.checkpoint(conn, "test", slippage_bps=5)
                assert cp.state == "verified", cp.problems
                judged = await history.reconcile(conn, slippage_bps=5)
                assert judged.clean, (judged.discrepancies, judged.findings)
                assert judged.base == cp.id

                async def past_the_cut(cut: int = cp.cut.runs) -> bool:
                    return bool(await pg.fetchval("SELECT max(id) > $1 FROM sim_runs", cut))

                # The next window holds runs (a checkpoint can be quicker than a run).
                await wait_until(past_the_cut, 60, "runs after the checkpoint's cut")
            full = await history.reconcile(conn, slippage_bps=5, full=True)
            assert full.clean and full.checkpoints_verified == 4
            # Runs did commit while they worked: the windows were not empty.
            assert await pg.fetchval("SELECT count(*) FROM sim_runs") > before
            windows = await pg.fetchval(
                "SELECT count(*) FROM sim_checkpoints WHERE runs_rows > 0 AND prev_id IS NOT NULL"
            )
            assert windows == 3
        finally:
            await conn.close()
    finally:
        for proc in procs:
            stop(proc)


async def test_schedulers_take_checkpoints_on_their_own_one_at_a_time(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    await seed_due(pg, 30)
    await pg.execute("UPDATE users SET sim_interval_s = 1")
    keeping = {**env, "SIM_CHECKPOINT_INTERVAL_S": "1"}
    procs = [spawn(["scheduler"], keeping), spawn(["scheduler"], keeping)]
    procs.append(spawn(["worker"], keeping))
    try:

        async def three() -> bool:
            return bool(
                await pg.fetchval(
                    "SELECT count(*) >= 3 FROM sim_checkpoints "
                    "WHERE state = 'verified' AND taken_by = 'scheduler' AND trades_rows > 0"
                )
            )

        await wait_until(three, 90, "three checkpoints by the schedulers")
    finally:
        for proc in procs:
            stop(proc)
    chain = await pg.fetch("SELECT id, prev_id, state FROM sim_checkpoints ORDER BY id")
    assert [c["state"] for c in chain if c["state"] != "verified"] == []
    assert [c["prev_id"] for c in chain] == [None, *[c["id"] for c in chain[:-1]]]
    full = simctl(["reconcile", "--full", "--json"], env)
    assert full.returncode == 0, full.stdout
    assert json_of(full)["checkpoints_verified"] == len(chain)


async def test_a_checkpoint_falls_due_by_rows_written_as_well_as_by_time(
    pg: asyncpg.Connection, runner: BatchRunner, db_url: str
) -> None:
    # SIM_CHECKPOINT_ROWS bounds what a reconcile sums at any write rate: an hour's interval
    # is not due, until the engine's rows after the latest cut reach the bound.
    await seed_due(pg, 20)
    conn = await asyncpg.connect(db_url)
    try:
        assert await history.checkpoint_due(conn, 3600, 0)  # none yet: due by time
        cp = await history.checkpoint(conn, "test", slippage_bps=5)
        assert cp.state == "verified"
        assert not await history.checkpoint_due(conn, 3600, 0)
        assert not await history.checkpoint_due(conn, 3600, 1)
        assert await run_round(pg, runner) == 20
        written = await pg.fetchval(
            "SELECT (SELECT count(*) FROM sim_runs) + (SELECT count(*) FROM trades) "
            "+ (SELECT count(*) FROM transactions WHERE sim_run_id IS NOT NULL)"
        )
        assert written > 20
        assert await history.checkpoint_due(conn, 3600, written)
        assert not await history.checkpoint_due(conn, 3600, written + 1)
        assert not await history.checkpoint_due(conn, 3600, 0)  # 0: by time only
        cp = await history.checkpoint(conn, "test", slippage_bps=5)
        assert cp.state == "verified" and sum(cp.rows.values()) == written
        assert not await history.checkpoint_due(conn, 3600, 1)
    finally:
        await conn.close()
