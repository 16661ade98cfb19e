"""Honest by construction: nobody can steer the market or a user's outcome, through any door an
operator has (settings, imports, parameters), and P&L is reported right."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.acceptance.test_cli import one_line_refusal
from tests.support.keys import key_args
from tests.support.procs import seed_due, simctl

KEY = "honest admin key"
FINGERPRINT = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()[:12]


@pytest.fixture
def admin_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "SIM_ADMIN_KEYS_SHA256": hashlib.sha256(KEY.encode()).hexdigest()}


@pytest.fixture
def empty_db_url(db_url: str) -> Iterator[str]:
    """A database with nothing in it, as an operator's first `simctl migrate` finds it."""
    from tests.support.services import create_database, drop_database, url_for

    del db_url
    name = create_database("template0")
    try:
        yield url_for(name)
    finally:
        drop_database(name)


def run_ok(args: list[str], env: dict[str, str]) -> Any:
    result = simctl(args, env)
    assert result.returncode == 0, result.stderr
    text = result.stdout.strip()
    return json.loads(text) if text.startswith(("{", "[")) else text


# -- 1. the market lives in the database ------------------------------------------------------
async def test_the_first_migrate_stores_the_market_with_a_random_seed_unless_one_is_set(
    env: dict[str, str], empty_db_url: str
) -> None:
    unset = {k: v for k, v in env.items() if k != "SIM_SEED"}
    first = simctl(["migrate"], {**unset, "DATABASE_URL": empty_db_url})
    assert first.returncode == 0, first.stderr
    assert "stored the market definition" in first.stdout
    conn = await asyncpg.connect(empty_db_url)
    try:
        row = await conn.fetchrow("SELECT * FROM sim_market")
        assert row is not None
        assert row["version"] == 1 and row["model_version"] == 2 and row["tick_s"] == 60
        assert row["seed"] != 42  # drawn with secrets, not a documented default
        audit = await conn.fetchrow("SELECT * FROM admin_audit WHERE action = 'market_define'")
        assert audit is not None
        assert json.loads(audit["details"])["seed_from"] == "secrets"
        assert str(row["seed"]) not in audit["details"]  # the seed is never written out
        # Running migrate again, with or without settings that agree, changes nothing.
        again = simctl(["migrate"], {**unset, "DATABASE_URL": empty_db_url})
        assert again.returncode == 0 and "stored the market" not in again.stdout
        assert await conn.fetch("SELECT * FROM sim_market") == [row]
        shown = run_ok(["market", "show", "--json"], {**unset, "DATABASE_URL": empty_db_url})
        shown = shown["versions"]
        assert shown[0]["model_version"] == 2 and "seed" not in shown[0]
    finally:
        await conn.close()


async def test_a_process_with_another_market_setting_refuses_to_start(
    env: dict[str, str], pg: asyncpg.Connection
) -> None:
    # The template was migrated with SIM_SEED=42 (tests/support/services.py).
    assert await pg.fetchval("SELECT seed FROM sim_market") == 42
    cases = [
        (["worker", "--burst"], {"SIM_SEED": "43"}, "SIM_SEED"),
        (["scheduler", "--once"], {"SIM_SEED": "7"}, "SIM_SEED"),
        (["scheduler", "--once"], {"SIM_VOLATILITY": "BTC=0.9"}, "SIM_VOLATILITY"),
        (["worker", "--burst"], {"SIM_TICK_S": "30"}, "SIM_TICK_S"),
        (["worker", "--burst"], {"SIM_START_PRICES": "ETH=5000"}, "SIM_START_PRICES"),
        (["migrate"], {"SIM_EPOCH": "2025-01-01T00:00:00Z"}, "SIM_EPOCH"),
    ]
    for args, extra, named in cases:
        result = simctl(args, {**env, **extra})
        assert result.returncode == 2, (args, extra, result.stderr)
        assert named in one_line_refusal(result.stderr)
        # Only the seed and the volatilities can be changed, so only they point there.
        changeable = named in ("SIM_SEED", "SIM_VOLATILITY")
        assert ("market change" in one_line_refusal(result.stderr)) == changeable, result.stderr
    # Unset, or equal to the stored value, is accepted.
    unset = {k: v for k, v in env.items() if k != "SIM_SEED"}
    assert simctl(["scheduler", "--once"], unset).returncode == 0
    same = {**env, "SIM_VOLATILITY": "BTC=0.65", "SIM_TICK_S": "60"}
    assert simctl(["scheduler", "--once"], same).returncode == 0


async def test_a_market_change_is_audited_and_never_reprices_a_tick_already_possible(
    admin_env: dict[str, str], pg: asyncpg.Connection
) -> None:
    no_key = simctl(["market", "change", "--volatility", "BTC=0.3", "--reason", "x"], admin_env)
    assert no_key.returncode == 1 and "admin key" in one_line_refusal(no_key.stderr)
    short = simctl(
        ["market", "change", "--reseed", "--lead-s", "10", "--reason", "x", *key_args(KEY)],
        admin_env,
    )
    assert short.returncode == 1 and "lead time" in one_line_refusal(short.stderr)
    changed = run_ok(
        [
            "market", "change", "--volatility", "BTC=0.3", "--reseed",
            "--reason", "seed seen in a log", *key_args(KEY),
        ],
        admin_env,
    )  # fmt: skip
    row = await pg.fetchrow("SELECT * FROM sim_market WHERE version = 2")
    assert row is not None
    assert row["seed"] != 42 and row["created_by"] == FINGERPRINT
    now = await pg.fetchval("SELECT now()")
    assert row["epoch"] >= now + timedelta(seconds=3600)  # after the lead time
    assert row["epoch"].isoformat() == changed["effective_from"].replace("Z", "+00:00")
    audit = await pg.fetchrow("SELECT * FROM admin_audit WHERE action = 'market_change'")
    assert audit is not None
    assert audit["admin_key"] == FINGERPRINT and audit["details"]["reason"] == "seed seen in a log"
    # The stored market's seed is no longer 42: a process still given SIM_SEED=42 refuses.
    assert simctl(["scheduler", "--once"], admin_env).returncode == 2
    unset = {k: v for k, v in admin_env.items() if k != "SIM_SEED"}
    assert simctl(["scheduler", "--once"], unset).returncode == 0


# -- 3. import is history, and an admin act ---------------------------------------------------
def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def test_price_import_needs_a_key_is_audited_and_refuses_the_future(
    admin_env: dict[str, str], pg: asyncpg.Connection, tmp_path: Path
) -> None:
    now = await pg.fetchval("SELECT now()")
    past = (now - timedelta(days=400)).replace(microsecond=0)
    good = b"asset,at,price_usd\r\nETH,%s,190\r\nETH,%s,191\r\n" % (
        past.isoformat().encode(),
        (past + timedelta(minutes=1)).isoformat().encode(),
    )
    path = write(tmp_path, "eth.csv", good)
    no_key = simctl(["prices", "import", str(path)], admin_env)
    assert no_key.returncode == 1 and "admin key" in one_line_refusal(no_key.stderr)
    future = write(
        tmp_path,
        "future.csv",
        b"asset,at,price_usd\nETH,%s,190\nETH,%s,1000000\n"
        % (past.isoformat().encode(), (now + timedelta(minutes=3)).isoformat().encode()),
    )
    refused = simctl(["prices", "import", str(future), *key_args(KEY)], admin_env)
    assert refused.returncode == 1
    line = one_line_refusal(refused.stderr)
    assert "line 3" in line and "later than now" in line
    assert await pg.fetchval("SELECT count(*) FROM price_history WHERE source = 'import'") == 0
    # Excel's UTF-8 with a BOM is accepted.
    bom = write(tmp_path, "bom.csv", b"\xef\xbb\xbf" + good)
    report = run_ok(["prices", "import", str(bom), *key_args(KEY)], admin_env)
    assert report["inserted"] == 2
    audit = await pg.fetchrow("SELECT * FROM admin_audit WHERE action = 'prices_import'")
    assert audit is not None
    details = audit["details"]
    assert audit["admin_key"] == FINGERPRINT
    assert details["sha256"] == hashlib.sha256(b"\xef\xbb\xbf" + good).hexdigest()
    assert details["assets"] == ["ETH"] and details["rows"] == 2
    assert details["first_at"] == past.isoformat()


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "line 1"),
        (b"asset,at,price_usd\nETH,2020-01-01T00:00:00Z,1\n\xff\xfe garbage\n", "line 3"),
        (b"asset,at,price_usd\nETH,2020-01-01T00:00:00Z,1\x00\n", "line 2"),
    ],
)
def test_binary_or_undecodable_content_is_refused_naming_its_line(
    admin_env: dict[str, str], tmp_path: Path, content: bytes, named: str
) -> None:
    path = write(tmp_path, "bad.csv", content)
    result = simctl(["prices", "import", str(path), *key_args(KEY)], admin_env)
    assert result.returncode == 1
    assert named in one_line_refusal(result.stderr)


# -- 4. reconcile audits prices ---------------------------------------------------------------
async def run_once(db_url: str, *, slippage_bps: int = 5) -> None:
    """Every due user's slot applied by the engine's own batch runner (the stored market)."""
    from simconfig import Settings
    from store.db import create_pool
    from store.market import load_market_retrying
    from tests.integration.test_batches import claims_of
    from workers.batch import BatchRunner

    settings = Settings(_env_file=None, database_url=db_url, sim_slippage_bps=slippage_bps)
    pool = await create_pool(db_url, max_size=2)
    try:
        runner = BatchRunner(pool, settings, await load_market_retrying(pool, settings))
        async with pool.acquire() as conn:
            claims = await claims_of(conn)
        outcome = await runner.run(claims)
        assert outcome.applied and not outcome.failed
    finally:
        await pool.close()


async def test_reconcile_names_a_trade_whose_price_is_not_its_ticks_stored_price(
    env: dict[str, str], pg: asyncpg.Connection, db_url: str
) -> None:
    await seed_due(pg, 40)
    await run_once(db_url)
    assert await pg.fetchval("SELECT count(*) FROM trades") > 0
    clean = simctl(["reconcile"], env)
    assert clean.returncode == 0, clean.stdout
    # A fill priced off the stored market (as a worker with another seed priced them).
    tampered = await pg.fetchval(
        "UPDATE trades SET price_usd = price_usd * 2, total_usd = total_usd * 2 "
        "WHERE id = (SELECT min(id) FROM trades) RETURNING id"
    )
    found = simctl(["reconcile", "--json"], env)
    assert found.returncode == 1
    named = [d["field"] for d in json.loads(found.stdout)["discrepancies"]]
    assert any(f.startswith(f"trade {tampered} ") for f in named), named
    # The configured slippage is part of the check: the same trades under 6 bps all differ.
    other = simctl(["reconcile", "--json"], {**env, "SIM_SLIPPAGE_BPS": "6"})
    count = await pg.fetchval("SELECT count(*) FROM trades")
    assert len(json.loads(other.stdout)["discrepancies"]) >= count


async def test_reconcile_names_a_run_valued_off_the_stored_prices(
    env: dict[str, str], pg: asyncpg.Connection, db_url: str
) -> None:
    await seed_due(pg, 10)
    await run_once(db_url)
    uid = await pg.fetchval("SELECT min(user_id) FROM portfolio WHERE btc > 0")
    await pg.execute("UPDATE portfolio SET usd_value = usd_value + 1000 WHERE user_id = $1", uid)
    await pg.execute(
        "UPDATE users SET portfolio_value_usd = portfolio_value_usd + 1000 WHERE id = $1", uid
    )
    found = simctl(["reconcile", "--json"], env)
    assert found.returncode == 1
    named = json.loads(found.stdout)["discrepancies"]
    assert [(d["user_id"], d["field"]) for d in named] == [
        (uid, "portfolio value at the stored prices of the last run")
    ]


# -- 5. P&L right everywhere ------------------------------------------------------------------
def admin(args: list[str], env: dict[str, str]) -> Any:
    return run_ok([*args, *key_args(KEY)], env)


async def pnl_of(pg: asyncpg.Connection, uid: int) -> Decimal:
    value: Decimal = await pg.fetchval("SELECT total_pnl_usd FROM sim_pnl WHERE user_id = $1", uid)
    return value


async def test_money_movements_never_show_as_gains_or_losses(
    admin_env: dict[str, str], pg: asyncpg.Connection, db_url: str
) -> None:
    uid = admin(["users", "create", "pnl@example.com", "--deposit", "10000"], admin_env)["id"]
    await pg.execute("UPDATE users SET sim_next_run_at = now() - interval '1 minute'")
    await pg.execute(
        "UPDATE users SET sim_strategy = 'dca', "
        'sim_params = \'{"usd": "3000", "assets": ["BTC", "ETH"]}\''
    )
    await run_once(db_url)
    assert await pg.fetchval("SELECT btc FROM portfolio WHERE user_id = $1", uid) > 0
    start = await pnl_of(pg, uid)
    assert start < 0  # fees and slippage, at the prices the run traded at
    shown = run_ok(["users", "show", str(uid)], admin_env)
    assert Decimal(shown["pnl_usd"]) == start
    # A completed crypto withdrawal, an airdrop, a USD deposit and a USD correction.
    wid = admin(
        ["withdrawals", "request", str(uid), "BTC", "0.001", "--address", "bc1qexample"], admin_env
    )["withdrawal_id"]
    admin(["withdrawals", "process", str(wid)], admin_env)
    admin(["withdrawals", "complete", str(wid)], admin_env)
    assert await pnl_of(pg, uid) == start
    admin(
        ["users", "adjust", str(uid), "--asset", "BTC", "--amount", "0.01", "--reason", "airdrop"],
        admin_env,
    )
    assert await pnl_of(pg, uid) == start
    admin(["users", "deposit", str(uid), "500"], admin_env)
    admin(["users", "adjust", str(uid), "--usd", "-12.5", "--reason", "duplicate"], admin_env)
    assert await pnl_of(pg, uid) == start
    shown = run_ok(["users", "show", str(uid)], admin_env)
    assert Decimal(shown["pnl_usd"]) == start
    row = await pg.fetchrow("SELECT * FROM sim_pnl WHERE user_id = $1", uid)
    assert row is not None
    assert row["total_pnl_usd"] == row["realised_pnl_usd"] + row["unrealised_pnl_usd"]
    # Each shown column is rounded once, so they add up to the P&L within one unit of rounding.
    assert abs(row["equity_usd"] - row["net_contributions_usd"] - start) <= Decimal("0.00000001")


async def test_a_run_moves_pnl_by_the_marked_to_market_change_minus_costs(
    admin_env: dict[str, str], pg: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    # Cash only at first (holdings from runs, not from adjustments recorded before prices were).
    await seed_due(pg, 30, holdings=False)
    await pg.execute("UPDATE users SET sim_next_run_at = now() - interval '30 minutes'")
    await run_once(db_url)
    await pg.execute("UPDATE users SET sim_next_run_at = now() - interval '20 minutes'")
    await run_once(db_url)
    before = {r["user_id"]: r["total_pnl_usd"] for r in await pg.fetch("SELECT * FROM sim_pnl")}
    held = {
        r["user_id"]: r
        for r in await pg.fetch(
            "SELECT p.*, u.balance_usd FROM portfolio p JOIN users u ON u.id = p.user_id"
        )
    }
    old_prices = {
        r["asset"]: r["price_usd"] for r in await pg.fetch("SELECT * FROM sim_latest_prices")
    }
    await pg.execute("UPDATE users SET sim_next_run_at = now() - interval '1 minute'")
    await run_once(db_url)
    new_prices = {
        r["asset"]: r["price_usd"] for r in await pg.fetch("SELECT * FROM sim_latest_prices")
    }
    assert new_prices != old_prices
    after = {r["user_id"]: r["total_pnl_usd"] for r in await pg.fetch("SELECT * FROM sim_pnl")}
    last_run = await pg.fetchval("SELECT max(scheduled_for) FROM sim_runs")
    trades = await pg.fetch("SELECT * FROM trades WHERE generated_at = $1", last_run)
    for uid, h in held.items():
        marked = sum(
            (h[a.lower()] * (new_prices[a] - old_prices[a]) for a in new_prices), Decimal(0)
        )
        costs = Decimal(0)
        for t in (t for t in trades if t["user_id"] == uid):
            fair = t["amount"] * new_prices[t["asset"]]
            slip = t["total_usd"] - fair if t["trade_type"] == "buy" else fair - t["total_usd"]
            costs += t["fee_usd"] + slip
        assert abs((after[uid] - before[uid]) - (marked - costs)) <= Decimal("0.00000001"), uid
    # report prints the same P&L as sim_pnl and users show.
    uid = next(iter(held))
    png = tmp_path / "r.png"
    printed = run_ok(["report", str(uid), "--out", str(png)], admin_env)
    assert f"P&L now {after[uid]:f} USD" in printed  # plain: 0.00000000, never 0E-8


async def test_money_into_a_deleted_or_deactivated_user_is_refused(
    admin_env: dict[str, str], pg: asyncpg.Connection
) -> None:
    gone = admin(["users", "create", "gone@example.com", "--deposit", "10"], admin_env)["id"]
    off = admin(["users", "create", "off@example.com", "--deposit", "10"], admin_env)["id"]
    admin(["users", "delete", str(gone)], admin_env)
    await pg.execute("UPDATE users SET is_active = false WHERE id = $1", off)
    for uid, why in ((gone, "deleted"), (off, "deactivated")):
        for args in (
            ["users", "deposit", str(uid), "100"],
            ["users", "adjust", str(uid), "--usd", "5", "--reason", "x"],
            ["users", "adjust", str(uid), "--asset", "BTC", "--amount", "1", "--reason", "x"],
        ):
            result = simctl([*args, *key_args(KEY)], admin_env)
            assert result.returncode == 1, (args, result.stderr)
            assert why in one_line_refusal(result.stderr)
    assert await pg.fetchval("SELECT sum(balance_usd) FROM users") == Decimal(20)


# -- 6. strategy parameters -------------------------------------------------------------------
async def test_set_strategy_refuses_knobs_and_oversized_parameters(
    admin_env: dict[str, str], pg: asyncpg.Connection
) -> None:
    uid = admin(["users", "create", "knobs@example.com", "--deposit", "100"], admin_env)["id"]
    before = await pg.fetchrow("SELECT sim_strategy, sim_params FROM users WHERE id = $1", uid)
    knobs = '{"win_rate":"0.99","target_profit":"1000","boost":true}'
    big = json.dumps({"usd": "50", "note": "x" * 10_000})
    for params, named in ((knobs, "win_rate"), (big, "bytes"), ('{"usd": "0"}', "usd")):
        result = simctl(
            ["users", "set-strategy", str(uid), "dca", "--params", params, *key_args(KEY)],
            admin_env,
        )
        assert result.returncode == 1, result.stderr
        assert named in one_line_refusal(result.stderr)
    after = await pg.fetchrow("SELECT sim_strategy, sim_params FROM users WHERE id = $1", uid)
    assert after == before
    admin(["users", "set-strategy", str(uid), "dca", "--params", '{"usd": "50"}'], admin_env)


async def test_a_database_that_already_ran_keeps_the_model_it_was_priced_with(
    env: dict[str, str], pg: asyncpg.Connection
) -> None:
    # As before 0006: no stored market, but model prices already written under SIM_SEED's old
    # default 42 and model 1.
    from engine.market import Market
    from simconfig import Settings

    await pg.execute("DELETE FROM sim_market")
    old = Market(Settings(_env_file=None).market_params(seed=42, model_version=1))
    at = old.tick_time(1_000_000)
    await pg.execute(
        "INSERT INTO price_history (asset, at, price_usd) VALUES ('BTC', $1, $2)",
        at,
        old.price("BTC", 1_000_000),
    )
    unset = {k: v for k, v in env.items() if k != "SIM_SEED"}
    assert simctl(["migrate"], unset).returncode == 0
    row = await pg.fetchrow("SELECT seed, model_version FROM sim_market")
    assert row is not None and (row["seed"], row["model_version"]) == (42, 1)


async def test_running_processes_pick_up_a_change_without_repricing_the_past(
    pg: asyncpg.Connection, db_url: str
) -> None:
    from simconfig import Settings
    from store.market import change_market, current_market, load_market
    from store.runs import prelude

    settings = Settings(_env_file=None, database_url=db_url)
    before = await load_market(pg, settings)
    await change_market(pg, FINGERPRINT, volatility={}, reseed=True, lead_s=600, reason="rotation")
    async with pg.transaction():
        _, version = await prelude(pg)  # what every batch and the ticker read
    after = await current_market(pg, before, version)
    assert (before.version, after.version) == (1, 2)
    now = await pg.fetchval("SELECT now()")
    tick = before.tick_of(now)
    # Every tick up to the lead time is priced as before; later ones by the new seed.
    for t in range(tick - 50, tick + 10):
        assert after.prices_at(t) == before.prices_at(t)
    assert after.price("BTC", tick + 30) != before.price("BTC", tick + 30)
