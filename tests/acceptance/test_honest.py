"""Honest by construction: nobody can steer the market or a user's outcome, through any door an
operator has (settings, imports, parameters), and P&L is reported right."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.acceptance.test_cli import one_line_refusal
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
        shown = run_ok(["market", "show"], {**unset, "DATABASE_URL": empty_db_url})
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
        ["market", "change", "--reseed", "--lead-s", "10", "--reason", "x", "--admin-key", KEY],
        admin_env,
    )
    assert short.returncode == 1 and "lead time" in one_line_refusal(short.stderr)
    changed = run_ok(
        [
            "market", "change", "--volatility", "BTC=0.3", "--reseed",
            "--reason", "seed seen in a log", "--admin-key", KEY,
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
    refused = simctl(["prices", "import", str(future), "--admin-key", KEY], admin_env)
    assert refused.returncode == 1
    line = one_line_refusal(refused.stderr)
    assert "line 3" in line and "later than now" in line
    assert await pg.fetchval("SELECT count(*) FROM price_history WHERE source = 'import'") == 0
    # Excel's UTF-8 with a BOM is accepted.
    bom = write(tmp_path, "bom.csv", b"\xef\xbb\xbf" + good)
    report = run_ok(["prices", "import", str(bom), "--admin-key", KEY], admin_env)
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
    result = simctl(["prices", "import", str(path), "--admin-key", KEY], admin_env)
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
