"""Admin keys never on the command line (where `ps` and shell history show them to every user
of the host), and seed-demo only for demo databases."""

from __future__ import annotations

import hashlib
from pathlib import Path

import asyncpg
import pytest

from tests.acceptance.test_cli import one_line_refusal
from tests.support.keys import with_admin_key
from tests.support.procs import refusal_state, seed_due, simctl

pytestmark = pytest.mark.timeout(180)

KEY = "admin-keys-test-key"
ESC = "\033"


@pytest.fixture
def admin_env(env: dict[str, str]) -> dict[str, str]:
    return with_admin_key(env, KEY)


async def test_an_admin_key_on_the_command_line_is_refused_with_a_pointer(
    admin_env: dict[str, str], pg: asyncpg.Connection
) -> None:
    await seed_due(pg, 1)
    before = await refusal_state(pg)
    for args in (
        ["users", "pause", "1", "--admin-key", KEY],
        ["users", "deposit", "1", "10", f"--admin-key={KEY}"],
    ):
        result = simctl(args, admin_env)
        assert result.returncode == 2, (args, result.stderr)
        line = one_line_refusal(result.stderr)
        assert "--admin-key-file" in line and "SIM_ADMIN_KEY" in line, line
        assert KEY not in line  # the refusal does not echo the key either
    assert await refusal_state(pg) == before


async def test_an_admin_key_from_a_file_is_accepted_and_only_its_fingerprint_is_audited(
    admin_env: dict[str, str], pg: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_due(pg, 1)
    key_file = tmp_path / "admin.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    no_env_key = {k: v for k, v in admin_env.items() if k != "SIM_ADMIN_KEY"}
    result = simctl(["users", "pause", "1", "--admin-key-file", str(key_file)], no_env_key)
    assert result.returncode == 0, result.stderr
    assert await pg.fetchval("SELECT sim_paused FROM users WHERE id = 1") is True
    actor = await pg.fetchval("SELECT admin_key FROM admin_audit ORDER BY id DESC LIMIT 1")
    assert actor == "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()[:12]
    missing = simctl(
        ["users", "resume", "1", "--admin-key-file", str(tmp_path / "nope")], no_env_key
    )
    assert missing.returncode == 2
    assert "nope" in one_line_refusal(missing.stderr)


async def test_seed_demo_writes_example_com_and_refuses_users_it_did_not_create(
    admin_env: dict[str, str], pg: asyncpg.Connection
) -> None:
    seeded = simctl(["seed-demo", "--users", "30"], admin_env)
    assert seeded.returncode == 0, seeded.stderr
    domains = {r["d"] for r in await pg.fetch("SELECT split_part(email, '@', 2) AS d FROM users")}
    assert domains == {"example.com"}
    again = simctl(["seed-demo", "--users", "5", "--seed", "2"], admin_env)
    assert again.returncode == 0, again.stderr  # a demo database takes more demo users
    made = simctl(["users", "create", "real.person@gmail.com"], admin_env)
    assert made.returncode == 0, made.stderr
    before = await refusal_state(pg)
    refused = simctl(["seed-demo", "--users", "5", "--seed", "3"], admin_env)
    assert refused.returncode == 1
    assert "did not create" in one_line_refusal(refused.stderr)
    assert await refusal_state(pg) == before
