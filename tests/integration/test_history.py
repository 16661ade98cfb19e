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


async def run_at(
    pg: asyncpg.Connection, runner: BatchRunner, ago_s: int, users: str = "true"
) -> int:
    """The users `users` selects, run once at a slot ago_s seconds ago (slots minutes apart
    fall in different ticks of the market, priced apart): the number of runs applied."""
    rows = await pg.fetch(
        "UPDATE users SET sim_next_run_at = now() - make_interval(secs => $1)"  # noqa: S608
        f" WHERE {users} RETURNING id, sim_next_run_at",
        ago_s,
    )
    done = await runner.run(sorted(Claim(r["id"], r["sim_next_run_at"]) for r in rows))
    return len(done.applied)


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


async def test_a_checkpoint_keeps_each_users_latest_slot_and_reconcile_values_at_it(
    pg: asyncpg.Connection, runner: BatchRunner, env: dict[str, str]
) -> None:
    latest = (
        "SELECT c.user_id, c.last_slot, (SELECT max(r.scheduled_for) FROM sim_runs r"
        "  WHERE r.user_id = c.user_id) AS ran FROM sim_checkpoint_users c"
        " WHERE c.checkpoint_id = (SELECT max(id) FROM sim_checkpoints) ORDER BY 1"
    )

    await seed_due(pg, 20)
    for ago in (300, 180):  # the first checkpoint from its window, the second from the first's
        assert await run_at(pg, runner, ago) == 20
        assert simctl(["checkpoint"], env).returncode == 0
        slots = await pg.fetch(latest)
        assert len(slots) == 20 and all(r["last_slot"] == r["ran"] for r in slots)
    cid = await pg.fetchval("SELECT max(id) FROM sim_checkpoints")
    # Half the users run after it: their slots come from the rows since.
    assert await run_at(pg, runner, 5, "id % 2 = 0") == 10
    assert simctl(["reconcile"], env).returncode == 0

    # A stored slot moved to another tick (one the market never priced): the quick reconcile
    # values that user's holdings there and says so; the full one names the stored total.
    uid = await pg.fetchval(
        "SELECT min(p.user_id) FROM portfolio p JOIN users u ON u.id = p.user_id"
        " WHERE u.id % 2 = 1 AND p.usd_value > 0"
    )
    assert uid is not None
    await pg.execute(
        "UPDATE sim_checkpoint_users SET last_slot = last_slot - interval '3 days'"
        " WHERE checkpoint_id = $1 AND user_id = $2",
        cid,
        uid,
    )
    quick = simctl(["reconcile", "--json"], env)
    assert quick.returncode == 1
    assert [(d["user_id"], d["field"]) for d in json_of(quick)["discrepancies"]] == [  # type: ignore[attr-defined]
        (uid, "portfolio value at the stored prices of the last run")
    ]
    full = simctl(["reconcile", "--full"], env)
    assert full.returncode == 1
    assert f"checkpoint {cid}: user {uid}: stored totals differ from its rows': last_slot" in (
        full.stdout
    )

    # A checkpoint taken before 0016 knows no slot: reconcile looks the runs up as before (a
    # value off its last run's prices is still named), and the next checkpoint stores them.
    await pg.execute("UPDATE sim_checkpoint_users SET last_slot = NULL")
    assert simctl(["reconcile"], env).returncode == 0
    assert simctl(["reconcile", "--full"], env).returncode == 0
    await pg.execute("UPDATE portfolio SET usd_value = usd_value + 1000 WHERE user_id = $1", uid)
    await pg.execute(
        "UPDATE users SET portfolio_value_usd = portfolio_value_usd + 1000 WHERE id = $1", uid
    )
    quick = simctl(["reconcile", "--json"], env)
    assert [(d["user_id"], d["field"]) for d in json_of(quick)["discrepancies"]] == [  # type: ignore[attr-defined]
        (uid, "portfolio value at the stored prices of the last run")
    ]
    await pg.execute("UPDATE portfolio SET usd_value = usd_value - 1000 WHERE user_id = $1", uid)
    await pg.execute(
        "UPDATE users SET portfolio_value_usd = portfolio_value_usd - 1000 WHERE id = $1", uid
    )
    assert simctl(["checkpoint"], env).returncode == 0
    slots = await pg.fetch(latest)
    assert len(slots) == 20 and all(r["last_slot"] == r["ran"] for r in slots)
    assert simctl(["reconcile", "--full"], env).returncode == 0


async def test_runs_committed_after_the_reconciles_cut_are_valued_at_their_own_slots(
    pg: asyncpg.Connection,
    runner: BatchRunner,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await seed_due(pg, 12)
    assert await run_at(pg, runner, 300) == 12
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        assert (await history.checkpoint(conn, "test", slippage_bps=5)).state == "verified"
        # Every user runs again between the reconcile's cut and its snapshots of the users:
        # neither the checkpoint nor the rows up to the cut know those slots.
        real, ran = history.take_cut, list[int]()

        async def cut_then_run(
            c: asyncpg.Connection, timer: history.Timer | None = None
        ) -> history.Cut:
            cut = await real(c, timer)
            if not ran:
                ran.append(await run_at(pg, runner, 5))
            return cut

        monkeypatch.setattr(history, "take_cut", cut_then_run)
        judged = await history.reconcile(conn, slippage_bps=5)
        assert ran == [12]
        assert judged.clean, (judged.discrepancies, judged.findings)
        assert judged.rows_since["sim_runs"] == 0  # they came after the cut
    finally:
        await conn.close()
