"""Operators' commands on the platform's own database after adoption: its rows were written by
code that never knew the engine's rules (mixed-case emails, NULL holdings, real users)."""

from __future__ import annotations

import hashlib
from decimal import Decimal

import asyncpg
import pytest

from tests.acceptance.test_cli import one_line_refusal
from tests.migration.test_adoption import db_name as db_name  # the restored backup
from tests.support.procs import simctl

pytestmark = pytest.mark.timeout(240)

KEY = "adopted-inputs-admin-key"


@pytest.fixture
async def adopted(env: dict[str, str]) -> dict[str, str]:
    admin = {
        **env,
        "SIM_ADMIN_KEYS_SHA256": hashlib.sha256(KEY.encode()).hexdigest(),
        "SIM_ADMIN_KEY": KEY,
    }
    result = simctl(["migrate"], admin)
    assert result.returncode == 0, result.stderr
    return admin


async def test_users_with_mixed_case_emails_are_found_in_any_case(
    adopted: dict[str, str], pg: asyncpg.Connection
) -> None:
    assert await pg.fetchval("SELECT email FROM users WHERE id = 63") == "Trader.63@Example.COM"
    for asked in ("Trader.63@Example.COM", "trader.63@example.com", "TRADER.63@EXAMPLE.COM"):
        result = simctl(["users", "show", asked], adopted)  # its output is JSON
        assert result.returncode == 0, (asked, result.stderr)
        assert '"id": 63' in result.stdout.replace('"user_id": 63', '"id": 63'), result.stdout


async def test_a_null_legacy_holding_counts_as_zero(
    adopted: dict[str, str], pg: asyncpg.Connection
) -> None:
    assert await pg.fetchval("SELECT ada FROM portfolio WHERE user_id = 1") is None
    added = simctl(
        ["users", "adjust", "1", "--asset", "ADA", "--amount", "5", "--reason", "airdrop"], adopted
    )
    assert added.returncode == 0, added.stderr
    assert await pg.fetchval("SELECT ada FROM portfolio WHERE user_id = 1") == Decimal("5")
    # A withdrawal of an asset whose legacy holding is NULL is refused for want of crypto.
    assert await pg.fetchval("SELECT ada FROM portfolio WHERE user_id = 2") is None
    refused = simctl(
        ["withdrawals", "request", "2", "ADA", "5", "--address", "addr1example"], adopted
    )
    assert refused.returncode == 1, refused.stderr
    line = one_line_refusal(refused.stderr)
    assert "ADA" in line and "0E-8" not in line and "NoneType" not in line


async def test_seed_demo_refuses_the_platform_database(
    adopted: dict[str, str], pg: asyncpg.Connection
) -> None:
    users = await pg.fetchval("SELECT count(*) FROM users")
    audit = await pg.fetchval("SELECT count(*) FROM admin_audit")
    refused = simctl(["seed-demo", "--users", "2"], adopted)
    assert refused.returncode == 1, refused.stderr
    assert "users" in one_line_refusal(refused.stderr)
    assert await pg.fetchval("SELECT count(*) FROM users") == users
    # With an admin key and the explicit flag it adds them, on example.com, audited.
    added = simctl(["seed-demo", "--users", "2", "--add-to-existing"], adopted)
    assert added.returncode == 0, added.stderr
    emails = await pg.fetch("SELECT email FROM users ORDER BY id DESC LIMIT 2")
    assert all(r["email"].endswith("@example.com") for r in emails), emails
    assert await pg.fetchval("SELECT count(*) FROM admin_audit") == audit + 1
    assert await pg.fetchval("SELECT action FROM admin_audit ORDER BY id DESC LIMIT 1") == (
        "seed_demo"
    )
    no_key = {k: v for k, v in adopted.items() if k != "SIM_ADMIN_KEY"}
    keyless = simctl(["seed-demo", "--users", "2", "--add-to-existing"], no_key)
    assert keyless.returncode == 1 and "admin key" in one_line_refusal(keyless.stderr)
