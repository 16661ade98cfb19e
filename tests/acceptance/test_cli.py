"""simctl through a subprocess, as an operator or a checker would use it."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import asyncpg
import pytest

from tests.support.procs import seed_due, simctl, spawn, stop

COMMANDS = ["migrate", "seed-demo", "scheduler", "worker", "run", "status", "reconcile"]


def one_line_refusal(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def examples(help_text: str) -> list[str]:
    """The example lines of a --help, each checked to stand on its own line."""
    lines = help_text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"^\s*Examples?\b.*:$", line)]
    assert starts, help_text
    found: list[str] = []
    for line in lines[starts[0] + 1 :]:
        if line.strip() in ("Arguments:", "Options:"):
            break
        if re.match(r"^\s*Examples?\b.*:$", line) or not line.strip():
            continue
        assert line.strip().startswith("simctl ") and line.count("simctl ") == 1, help_text
        found.append(line.strip())
    return found


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command: str, env: dict[str, str]) -> None:
    result = simctl([command, "--help"], env)
    assert result.returncode == 0
    assert any(e.startswith(f"simctl {command}") for e in examples(result.stdout))


def test_top_level_help_lists_the_commands(env: dict[str, str]) -> None:
    result = simctl([], env)
    assert result.returncode == 0
    assert all(c in result.stdout for c in COMMANDS)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("SIM_SEED", "abc", "SIM_SEED"),
        ("SIM_LEASE_S", "0", "SIM_LEASE_S"),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL"),
        ("SIM_ADMIN_KEYS_SHA256", "not-hex", "SIM_ADMIN_KEYS_SHA256"),
        ("SIM_DEFAULT_STRATEGY", "martingale", "SIM_DEFAULT_STRATEGY"),
    ],
)
def test_a_bad_setting_stops_with_one_line_naming_it(
    env: dict[str, str], variable: str, value: str, named: str
) -> None:
    result = simctl(["status"], {**env, variable: value})
    assert result.returncode == 2
    assert named in one_line_refusal(result.stderr)


def test_passwords_never_appear_in_output(env: dict[str, str]) -> None:
    result = simctl(["migrate"], {**env, "DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/x"})
    assert result.returncode == 2
    line = one_line_refusal(result.stderr)
    assert "hunter2" not in line + result.stdout and "u:***@" in line


def test_bad_usage_is_exit_2(env: dict[str, str]) -> None:
    result = simctl(["seed-demo", "--users", "-5"], env)
    assert result.returncode == 2
    assert "--users" in one_line_refusal(result.stderr)


async def test_migrate_is_idempotent_and_seed_demo_matches_its_ledger(
    env: dict[str, str], pg: asyncpg.Connection
) -> None:
    again = simctl(["migrate"], env)
    assert again.returncode == 0 and "up to date" in again.stdout
    seeded = simctl(["seed-demo", "--users", "750", "--seed", "9"], env)
    assert seeded.returncode == 0, seeded.stderr
    row = await pg.fetchrow(
        """SELECT count(*) AS n, count(*) FILTER (WHERE sim_enabled) AS on,
                  count(DISTINCT email) AS emails, sum(balance_usd) AS bal,
                  (SELECT sum(amount) FROM transactions WHERE type = 'deposit' AND status = 'completed') AS dep,
                  (SELECT count(*) FROM portfolio) AS portfolios,
                  max(sim_next_run_at) - min(sim_next_run_at) AS spread
             FROM users"""
    )
    assert row is not None
    assert row["n"] == row["on"] == row["emails"] == row["portfolios"] == 750
    assert row["bal"] == row["dep"] > Decimal(750 * 100)
    assert row["spread"].total_seconds() > 200  # spread over the 300 s interval
    clean = simctl(["reconcile", "--json"], env)
    assert clean.returncode == 0 and json.loads(clean.stdout)["clean"] is True
    # A database simengine created (not adopted) has no legacy ledger to report on.
    legacy = simctl(["reconcile", "--legacy"], env)
    assert legacy.returncode == 0 and "never adopted" in legacy.stdout, legacy.stdout


async def test_reconcile_names_what_was_changed_behind_its_back(
    env: dict[str, str], pg: asyncpg.Connection
) -> None:
    await seed_due(pg, 10)
    uid = await pg.fetchval("SELECT min(id) FROM users")
    await pg.execute("UPDATE users SET balance_usd = balance_usd + 1 WHERE id = $1", uid)
    await pg.execute("UPDATE portfolio SET eth = eth + 0.5 WHERE user_id = $1", uid + 1)
    result = simctl(["reconcile"], env)
    assert result.returncode == 1
    assert f"user {uid}: balance_usd" in result.stdout
    assert f"user {uid + 1}: eth" in result.stdout
    as_json = json.loads(simctl(["reconcile", "--json"], env).stdout)
    assert {(d["user_id"], d["field"]) for d in as_json["discrepancies"]} == {
        (uid, "balance_usd"),
        (uid + 1, "eth"),
    }


async def test_run_wait_prints_the_run_once_a_worker_applies_it(
    env: dict[str, str], pg: asyncpg.Connection
) -> None:
    await seed_due(pg, 3)
    await pg.execute("UPDATE users SET sim_next_run_at = now() + interval '1 hour'")
    uid = await pg.fetchval("SELECT min(id) FROM users")
    email = await pg.fetchval("SELECT email FROM users WHERE id = $1", uid)
    worker = spawn(["worker"], env)
    try:
        result = simctl(["run", email.upper(), "--wait", "--timeout-s", "60"], env)
    finally:
        stop(worker)
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["outcome"] == "applied" and run["trades_count"] == len(run["trades"])
    assert await pg.fetchval("SELECT count(*) FROM sim_runs WHERE user_id = $1", uid) == 1
    # The other users were not made due.
    assert await pg.fetchval("SELECT count(*) FROM sim_runs") == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("sim_paused = true", "paused"),
        ("sim_enabled = false", "disabled"),
        ("is_active = false", "deactivated"),
        ("deleted_at = now()", "deleted"),
    ],
)
async def test_run_refuses_a_user_who_is_not_eligible(
    env: dict[str, str], pg: asyncpg.Connection, change: str, reason: str
) -> None:
    await seed_due(pg, 1)
    uid = await pg.fetchval("SELECT id FROM users")
    before = await pg.fetchval("SELECT sim_next_run_at FROM users")
    await pg.execute(f"UPDATE users SET {change}")  # noqa: S608 (fixed text)
    result = simctl(["run", str(uid)], env)
    assert result.returncode == 1
    assert reason in one_line_refusal(result.stderr)
    assert await pg.fetchval("SELECT sim_next_run_at FROM users") == before


def test_run_refuses_an_unknown_user(env: dict[str, str]) -> None:
    result = simctl(["run", "999999"], env)
    assert result.returncode == 1
    assert "no user with id 999999" in one_line_refusal(result.stderr)


async def test_status_json_reports_due_users_and_queue(
    env: dict[str, str], pg: asyncpg.Connection
) -> None:
    await seed_due(pg, 25)
    status = json.loads(simctl(["status", "--json"], env).stdout)
    assert status["due_now"] == 25 and status["queue_depth"] == 0
    assert status["oldest_lag_s"] >= 60
    assert simctl(["scheduler", "--once"], env).returncode == 0
    status = json.loads(simctl(["status", "--json"], env).stdout)
    assert status["queue_depth"] == 1
    assert set(status["last_tick"]) == {"BTC", "ETH", "USDT", "USDC", "XRP", "ADA"}
    table = simctl(["status"], env)
    assert table.returncode == 0 and "due now" in table.stdout and "last tick BTC" in table.stdout


@pytest.mark.parametrize("command", [["scheduler", "--once"], ["worker", "--burst"]])
def test_unreachable_redis_is_exit_2_without_a_traceback(
    env: dict[str, str], command: list[str]
) -> None:
    from tests.support.services import free_port

    result = simctl(command, {**env, "REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    assert "cannot reach Redis" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "command",
    [
        ["users", sub]
        for sub in (
            "create",
            "show",
            "list",
            "enable",
            "disable",
            "pause",
            "resume",
            "set-interval",
            "set-strategy",
            "deposit",
            "adjust",
            "delete",
        )
    ]
    + [["withdrawals", sub] for sub in ("request", "process", "complete", "fail", "list")]
    + [["prices", "import"], ["prices", "show"], ["report"], ["grant-reader"], ["bench"]],
)
def test_every_subcommand_has_an_example(command: list[str], env: dict[str, str]) -> None:
    result = simctl([*command, "--help"], env)
    assert result.returncode == 0
    assert any(e.startswith(f"simctl {' '.join(command)}") for e in examples(result.stdout))
