"""Operators' commands through the real command line: happy paths with their audit rows, and
every bad input refused with one line, nothing changed."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.acceptance.test_cli import one_line_refusal
from tests.support.keys import key_args
from tests.support.procs import seed_due, simctl

KEY = "correct horse battery staple"
FINGERPRINT = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()[:12]
HOSTILE = ["O'Brien; DROP TABLE users; --", 'Zoë "quoted" ☃', "\\x00\\' OR 1=1"]


@pytest.fixture
def admin_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "SIM_ADMIN_KEYS_SHA256": hashlib.sha256(KEY.encode()).hexdigest()}


def ok(args: list[str], env: dict[str, str]) -> Any:
    result = simctl(
        [*args, *key_args(KEY)]
        if args[0] in ("users", "withdrawals", "prices", "market")
        and args[1] not in ("show", "list")
        else args,
        env,
    )
    assert result.returncode == 0, result.stderr
    return (
        json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else result.stdout
    )


async def snapshot(pg: asyncpg.Connection) -> list[Any]:
    return [
        await pg.fetch("SELECT * FROM users ORDER BY id"),
        await pg.fetch("SELECT * FROM transactions ORDER BY id"),
        await pg.fetch("SELECT * FROM portfolio ORDER BY id"),
        await pg.fetch("SELECT * FROM withdrawals ORDER BY id"),
        await pg.fetch("SELECT * FROM admin_audit ORDER BY id"),
        await pg.fetch("SELECT * FROM price_history ORDER BY asset, at"),
    ]


async def test_user_lifecycle_is_audited_with_a_fingerprint(
    admin_env: dict[str, str], pg: asyncpg.Connection
) -> None:
    created = ok(
        ["users", "create", "Ana.Silva@Example.com", "--name", HOSTILE[0], "--deposit", "2500.5"],
        admin_env,
    )
    uid = created["id"]
    for action in (["pause"], ["resume"], ["disable"], ["enable"], ["set-interval", "600"]):
        ok(["users", action[0], "ana.silva@example.com", *action[1:]], admin_env)
    ok(
        ["users", "set-strategy", str(uid), "dca", "--params", '{"usd": "25", "assets": ["BTC"]}'],
        admin_env,
    )
    ok(["users", "deposit", str(uid), "100"], admin_env)
    ok(["users", "adjust", str(uid), "--usd", "-0.5", "--reason", HOSTILE[1]], admin_env)
    ok(
        ["users", "adjust", str(uid), "--asset", "eth", "--amount", "0.25", "--reason", "airdrop"],
        admin_env,
    )
    shown = ok(["users", "show", str(uid)], admin_env)
    assert shown["full_name"] == HOSTILE[0] and shown["email"] == "ana.silva@example.com"
    assert Decimal(shown["balance_usd"]) == Decimal("2600.00000000")
    assert Decimal(shown["holdings"]["ETH"]) == Decimal("0.25")
    assert shown["sim_interval_s"] == 600 and shown["sim_strategy"] == "dca"
    ok(["users", "delete", str(uid)], admin_env)
    audit = await pg.fetch(
        "SELECT admin_key, action, details FROM admin_audit WHERE target_user_id = $1 ORDER BY id",
        uid,
    )
    assert [a["action"] for a in audit] == [
        "create_user",
        "pause",
        "resume",
        "disable",
        "enable",
        "set_interval",
        "set_strategy",
        "deposit",
        "adjustment",
        "adjust_holding",
        "delete",
    ]
    assert {a["admin_key"] for a in audit} == {FINGERPRINT}
    assert audit[1]["details"]["changes"]["sim_paused"] == {"before": False, "after": True}
    assert KEY not in json.dumps([a["details"] for a in audit])
    listed = ok(["users", "list", "--search", "silva", "--include-deleted", "--json"], admin_env)
    assert [u["id"] for u in listed] == [uid]
    clean = simctl(["reconcile"], admin_env)
    assert clean.returncode == 0, clean.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["users", "create", "not-an-email", "--deposit", "1"], 1, "not a valid email"),
        (["users", "create", "A@B.CO", "--deposit", "-5"], 1, "must be positive"),
        (["users", "create", "x@y.io", "--deposit", "ten"], 1, "must be a number"),
        (["users", "create", "x@y.io", "--deposit", "1.000000001"], 1, "at most 8 decimals"),
        (["users", "create", "a@b.co", "--deposit", "1"], 1, "already exists"),
        (["users", "deposit", "999999", "5"], 1, "no user with id 999999"),
        (["users", "deposit", "nobody@nowhere.io", "5"], 1, "no user with email"),
        (["users", "deposit", "1", "0"], 1, "must be positive"),
        (["users", "adjust", "1", "--usd", "-1000000", "--reason", "x"], 1, "cannot go below 0"),
        (
            ["users", "adjust", "1", "--asset", "DOGE", "--amount", "1", "--reason", "x"],
            1,
            "unknown asset",
        ),
        (
            ["users", "adjust", "1", "--asset", "BTC", "--amount", "-1", "--reason", "x"],
            1,
            "cannot go below",
        ),
        (["users", "adjust", "1", "--usd", "5"], 2, "--reason"),
        (["users", "set-strategy", "1", "martingale"], 1, "unknown strategy"),
        (["users", "set-strategy", "1", "dca", "--params", "{not json"], 2, "not JSON"),
        (["users", "set-interval", "1", "0"], 2, "SECONDS"),
        (
            ["withdrawals", "request", "1", "BTC", "5", "--address", "x"],
            1,
            "has 0.00000000 BTC available (0.00000000 held",
        ),
        (["withdrawals", "complete", "424242"], 1, "no withdrawal"),
    ],
)
async def test_bad_input_is_refused_in_one_line_and_changes_nothing(
    admin_env: dict[str, str], pg: asyncpg.Connection, args: list[str], code: int, message: str
) -> None:
    ok(["users", "create", "a@b.co", "--deposit", "100"], admin_env)
    before = await snapshot(pg)
    result = simctl([*args, *key_args(KEY)], admin_env)
    assert result.returncode == code, result.stderr
    assert message in one_line_refusal(result.stderr)
    assert await snapshot(pg) == before


@pytest.mark.parametrize("key", [None, "wrong key"])
async def test_no_valid_admin_key_no_change(
    admin_env: dict[str, str], pg: asyncpg.Connection, key: str | None
) -> None:
    ok(["users", "create", "a@b.co", "--deposit", "100"], admin_env)
    before = await snapshot(pg)
    args = ["users", "pause", "1"] + ([] if key is None else key_args(key))
    result = simctl(args, admin_env)
    assert result.returncode == 1
    assert "admin key" in one_line_refusal(result.stderr)
    assert await snapshot(pg) == before
    with_env_key = simctl(["users", "pause", "1"], {**admin_env, "SIM_ADMIN_KEY": KEY})
    assert with_env_key.returncode == 0


async def test_withdrawal_reserves_then_completes_or_fails(
    admin_env: dict[str, str], pg: asyncpg.Connection
) -> None:
    uid = ok(["users", "create", "w@x.io", "--deposit", "100"], admin_env)["id"]
    ok(
        ["users", "adjust", str(uid), "--asset", "BTC", "--amount", "1", "--reason", "seed"],
        admin_env,
    )
    first = ok(
        ["withdrawals", "request", str(uid), "BTC", "0.6", "--address", HOSTILE[2]], admin_env
    )["withdrawal_id"]
    # Only 0.4 is left to reserve.
    refused = simctl(
        ["withdrawals", "request", str(uid), "BTC", "0.5", "--address", "a", *key_args(KEY)],
        admin_env,
    )
    assert refused.returncode == 1 and "0.4" in refused.stderr
    illegal = simctl(["withdrawals", "complete", str(first), *key_args(KEY)], admin_env)
    assert illegal.returncode == 1 and "cannot complete" in one_line_refusal(illegal.stderr)
    ok(["withdrawals", "process", str(first)], admin_env)
    done = ok(["withdrawals", "complete", str(first), "--tx-hash", "0xabc"], admin_env)
    assert Decimal(done["net_sent"]) == Decimal("0.6") - Decimal("0.0002")
    assert await pg.fetchval("SELECT btc FROM portfolio WHERE user_id = $1", uid) == Decimal("0.4")
    second = ok(["withdrawals", "request", str(uid), "BTC", "0.4", "--address", "b"], admin_env)[
        "withdrawal_id"
    ]
    ok(["withdrawals", "fail", str(second), "--error", "address rejected"], admin_env)
    backwards = simctl(["withdrawals", "process", str(second), *key_args(KEY)], admin_env)
    assert backwards.returncode == 1 and "failed" in backwards.stderr
    rows = ok(["withdrawals", "list", "--user", str(uid), "--json"], admin_env)
    assert [(r["status"], r["error_message"]) for r in rows] == [
        ("failed", "address rejected"),
        ("completed", None),
    ]
    assert simctl(["reconcile"], admin_env).returncode == 0


def write_csv(tmp_path: Path, name: str, rows: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("asset,at,price_usd\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


async def test_price_import_is_all_or_nothing_and_never_rewrites(
    admin_env: dict[str, str], pg: asyncpg.Connection, tmp_path: Path
) -> None:
    good = write_csv(
        tmp_path,
        "good.csv",
        [
            "BTC,2020-03-12T00:00:00Z,7900.5",
            "BTC,2020-03-12T01:00:00+00:00,7600",
            "ETH,2020-03-12T00:00:00Z,190",
        ],
    )
    first = ok(["prices", "import", str(good)], admin_env)
    assert first["inserted"] == 3
    assert (
        ok(["prices", "import", str(good)], admin_env)["inserted"] == 0
    )  # identical: nothing changes
    before = await snapshot(pg)
    bad_row = write_csv(tmp_path, "bad.csv", ["BTC,2020-03-13T00:00:00Z,7000", "BTC,yesterday,1"])
    changed = write_csv(tmp_path, "changed.csv", ["BTC,2020-03-12T01:00:00Z,7601"])
    cases = [
        (bad_row, "line 3"),
        (changed, "line 2"),
        (write_csv(tmp_path, "neg.csv", ["ETH,2020-03-12T02:00:00Z,-1"]), "positive"),
        (write_csv(tmp_path, "naive.csv", ["ETH,2020-03-12T02:00:00,1"]), "time zone"),
    ]
    for path, message in cases:
        result = simctl(["prices", "import", str(path), *key_args(KEY)], admin_env)
        assert result.returncode == 1, (path, result.stderr)
        assert message in one_line_refusal(result.stderr)
    missing = simctl(["prices", "import", str(tmp_path / "nope.csv"), *key_args(KEY)], admin_env)
    assert missing.returncode == 2 and "cannot read" in one_line_refusal(missing.stderr)
    assert await snapshot(pg) == before
    shown = ok(["prices", "show", "btc", "--since", "2020-03-12T00:30:00+00:00"], admin_env)
    assert [(r["price_usd"], r["source"]) for r in shown] == [("7600.00000000", "import")]


async def test_import_refuses_a_span_over_model_prices_and_runs_use_imports(
    admin_env: dict[str, str], pg: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_due(pg, 20)
    assert (
        simctl(["scheduler", "--once"], admin_env).returncode == 0
    )  # the ticker writes model ticks
    now = await pg.fetchval("SELECT max(at) FROM price_history WHERE asset = 'BTC'")
    # A model price a run recorded an hour ago; imports are history, so they can only cover it
    # from the past.
    await pg.execute(
        "INSERT INTO price_history (asset, at, price_usd) VALUES ('BTC', $1, 1)",
        now - timedelta(hours=1),
    )
    covering = write_csv(
        tmp_path,
        "over.csv",
        [
            f"BTC,{(now.replace(year=now.year - 1)).isoformat()},100",
            f"BTC,{(now - timedelta(minutes=30)).isoformat()},100",
        ],
    )
    refused = simctl(["prices", "import", str(covering), *key_args(KEY)], admin_env)
    assert refused.returncode == 1 and "covers a model price" in one_line_refusal(refused.stderr)
    # Earlier ADA history (no model price written there): slots inside it are priced from it.
    slot = await pg.fetchval("SELECT date_trunc('hour', now()) - interval '3 hours'")
    await pg.execute("UPDATE users SET sim_next_run_at = $1, sim_claimed_until = NULL", slot)
    await pg.execute("DELETE FROM sim_leases")
    future = write_csv(
        tmp_path,
        "ada.csv",
        [
            f"ADA,{(slot - timedelta(minutes=5)).isoformat()},0.31",
            f"ADA,{(slot + timedelta(hours=1)).isoformat()},0.29",
        ],
    )
    ok(["prices", "import", str(future)], admin_env)
    from engine.market import Market
    from simconfig import Settings
    from store.db import create_pool
    from tests.integration.test_batches import claims_of
    from workers.batch import BatchRunner

    settings = Settings(_env_file=None, database_url=admin_env["DATABASE_URL"], sim_seed=42)
    await pg.execute(
        'UPDATE users SET sim_strategy = \'dca\', sim_params = \'{"usd": "50", "assets": ["ADA"]}\''
    )
    pool = await create_pool(admin_env["DATABASE_URL"], max_size=2)
    try:
        outcome = await BatchRunner(pool, settings, Market(settings.market_params(seed=42))).run(
            await claims_of(pg)
        )
    finally:
        await pool.close()
    assert len(outcome.applied) == 20
    prices = {
        r["price_usd"]
        for r in await pg.fetch("SELECT DISTINCT price_usd FROM trades WHERE asset = 'ADA'")
    }
    # Fill price is the imported 0.31 plus 5 bps slippage, rounded up.
    assert prices == {Decimal("0.31015500")}


async def test_report_writes_a_png_and_html(
    admin_env: dict[str, str], pg: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_due(pg, 4)
    from engine.market import Market
    from simconfig import Settings
    from store.db import create_pool
    from tests.integration.test_batches import claims_of
    from workers.batch import BatchRunner

    settings = Settings(_env_file=None, database_url=admin_env["DATABASE_URL"])
    pool = await create_pool(admin_env["DATABASE_URL"], max_size=2)
    try:
        runner = BatchRunner(pool, settings, Market(settings.market_params(seed=42)))
        for minutes in range(12):
            await pg.execute(
                "UPDATE users SET sim_next_run_at = now() - make_interval(mins => 100 - $1)",
                minutes,
            )
            await runner.run(await claims_of(pg))
    finally:
        await pool.close()
    uid = await pg.fetchval("SELECT min(id) FROM users")
    png = tmp_path / "equity.png"
    page = tmp_path / "equity.html"
    result = simctl(["report", str(uid), "--out", str(png), "--html", str(page)], admin_env)
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "src='data:image/png;base64," in page.read_text(encoding="utf-8")
    nothing = simctl(["report", "999999", "--out", str(png)], admin_env)
    assert nothing.returncode == 1


async def test_holding_changes_between_runs_keep_the_value_marked_at_the_last_slot(
    admin_env: dict[str, str], pg: asyncpg.Connection
) -> None:
    await seed_due(pg, 2)
    assert simctl(["scheduler", "--once"], admin_env).returncode == 0
    assert simctl(["worker", "--burst"], admin_env).returncode == 0
    uid = await pg.fetchval("SELECT min(id) FROM users")
    ok(
        ["users", "adjust", str(uid), "--asset", "ETH", "--amount", "2", "--reason", "gift"],
        admin_env,
    )
    ok(["withdrawals", "request", str(uid), "ETH", "0.5", "--address", "0xabc"], admin_env)
    wid = await pg.fetchval("SELECT max(id) FROM withdrawals")
    ok(["withdrawals", "process", str(wid)], admin_env)
    ok(["withdrawals", "complete", str(wid)], admin_env)
    exact = await pg.fetchval(
        """WITH slot AS (SELECT max(scheduled_for) AS at FROM sim_runs WHERE user_id = $1)
           SELECT sum(h.q * (SELECT price_usd FROM price_history ph, slot
                               WHERE ph.asset = h.a AND ph.at <= slot.at
                               ORDER BY ph.at DESC LIMIT 1))
             FROM portfolio p, LATERAL (VALUES ('BTC', p.btc), ('ETH', p.eth), ('USDT', p.usdt),
                  ('USDC', p.usdc), ('XRP', p.xrp), ('ADA', p.ada)) h(a, q)
            WHERE p.user_id = $1""",
        uid,
    )
    expected = exact.quantize(
        Decimal("0.00000001"), rounding=ROUND_HALF_EVEN
    )  # valuations: half-even
    row = await pg.fetchrow(
        "SELECT p.usd_value, u.portfolio_value_usd FROM portfolio p JOIN users u ON u.id = p.user_id "
        "WHERE u.id = $1",
        uid,
    )
    assert row is not None and row["usd_value"] == row["portfolio_value_usd"] == expected
    assert simctl(["reconcile"], admin_env).returncode == 0
