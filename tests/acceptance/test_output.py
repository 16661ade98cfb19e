"""What an operator reads from simctl: plain decimals, UTF-8 JSON, lists with a header that say
when they are empty, unknown users refused by every command that takes one, a literal search,
a negative amount refused in words, and `status --watch` into a pipe writing a block per refresh."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest

from tests.acceptance.test_cli import one_line_refusal
from tests.acceptance.test_operators import KEY, ok, snapshot
from tests.support.keys import key_args
from tests.support.procs import SIMCTL, simctl


@pytest.fixture
def admin_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "SIM_ADMIN_KEYS_SHA256": hashlib.sha256(KEY.encode()).hexdigest()}


async def test_amounts_print_as_plain_decimals_and_json_keeps_utf8(
    admin_env: dict[str, str],
) -> None:
    uid = ok(["users", "create", "zoe@example.com", "--name", "Zoë ☃ Łukasz"], admin_env)["id"]
    shown = simctl(["users", "show", str(uid)], admin_env)
    assert shown.returncode == 0, shown.stderr
    assert "Zoë ☃ Łukasz" in shown.stdout and "\\u00eb" not in shown.stdout
    assert '"balance_usd": "0.00000000"' in shown.stdout
    listed = simctl(["users", "list"], admin_env)
    assert "E-8" not in listed.stdout and "E-" not in shown.stdout
    assert "0.00000000" in listed.stdout and "Zoë ☃ Łukasz" in listed.stdout


async def test_lists_have_a_header_and_say_when_they_are_empty(
    admin_env: dict[str, str],
) -> None:
    for args, empty in (
        (["users", "list"], "no users"),
        (["users", "list", "--search", "nobody"], "no users match"),
        (["withdrawals", "list"], "no withdrawals"),
        (["withdrawals", "list", "--status", "pending"], "no withdrawals match"),
    ):
        result = simctl(args, admin_env)
        assert result.returncode == 0 and result.stdout.strip() == empty, (args, result)
    ok(["users", "create", "ana@example.com", "--name", "Ana", "--deposit", "25"], admin_env)
    lines = simctl(["users", "list"], admin_env).stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "EMAIL",
        "NAME",
        "BALANCE_USD",
        "VALUE_USD",
        "STRATEGY",
        "STATE",
    ]
    assert lines[1].split()[:4] == ["1", "ana@example.com", "Ana", "25.00000000"]
    ok(["users", "adjust", "1", "--asset", "BTC", "--amount", "0.5", "--reason", "test"], admin_env)
    ok(["withdrawals", "request", "1", "BTC", "0.005", "--address", "bc1q"], admin_env)
    lines = simctl(["withdrawals", "list"], admin_env).stdout.splitlines()
    assert lines[0].split()[:5] == ["ID", "USER", "ASSET", "AMOUNT", "STATUS"]
    assert lines[1].split()[:5] == ["1", "1", "BTC", "0.00500000", "pending"]


async def test_search_treats_percent_and_underscore_literally(
    admin_env: dict[str, str],
) -> None:
    ok(["users", "create", "a_b@example.com", "--name", "Under Score"], admin_env)
    ok(["users", "create", "axb@example.com", "--name", "100% Ada"], admin_env)
    found = {
        term: [r["email"] for r in ok(["users", "list", "--search", term, "--json"], admin_env)]
        for term in ("_", "%", "a_b", "100%", "axb")
    }
    assert found == {
        "_": ["a_b@example.com"],
        "%": ["axb@example.com"],
        "a_b": ["a_b@example.com"],
        "100%": ["axb@example.com"],
        "axb": ["axb@example.com"],
    }


async def test_every_command_that_takes_a_user_refuses_an_unknown_one(
    admin_env: dict[str, str], pg: asyncpg.Connection, tmp_path: Path
) -> None:
    before = await snapshot(pg)
    for args in (
        ["users", "show", "999999"],
        ["users", "pause", "999999", *key_args(KEY)],
        ["users", "deposit", "999999", "5", *key_args(KEY)],
        ["users", "show", "nobody@example.com"],
        ["run", "999999"],
        ["report", "999999", "--out", str(tmp_path / "r.png")],
        ["reconcile", "--user", "999999"],
        ["withdrawals", "list", "--user", "999999"],
        ["withdrawals", "request", "999999", "BTC", "0.1", "--address", "x", *key_args(KEY)],
    ):
        result = simctl(args, admin_env)
        assert result.returncode == 1, (args, result)
        assert "no user with" in one_line_refusal(result.stderr), args
        assert "clean" not in result.stdout
    assert await snapshot(pg) == before


async def test_a_negative_amount_is_refused_in_words(
    admin_env: dict[str, str], pg: asyncpg.Connection
) -> None:
    ok(["users", "create", "neg@example.com", "--deposit", "10"], admin_env)
    before = await snapshot(pg)
    for args, why in (
        (["users", "deposit", "1", "-5"], "amount must be positive, got -5"),
        (["users", "deposit", "1", "-0.5", *key_args(KEY)], "amount must be positive"),
        (["withdrawals", "request", "1", "BTC", "-1", "--address", "x"], "must be positive"),
    ):
        result = simctl(args if "--admin-key-file" in args else [*args, *key_args(KEY)], admin_env)
        assert result.returncode == 1, (args, result)
        line = one_line_refusal(result.stderr)
        assert why in line and "No such option" not in line
    assert await snapshot(pg) == before


@pytest.mark.timeout(120)
def test_status_watch_into_a_pipe_writes_a_block_per_refresh(env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [*SIMCTL, "status", "--watch", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        stamps: list[str] = []
        started = time.monotonic()
        while len(stamps) < 3:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            if line.startswith("-- ") and line.rstrip().endswith("UTC"):
                stamps.append(line)
            assert time.monotonic() - started < 100, "no third block"
        assert len(set(stamps)) >= 2  # each block says when it was read
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # drains and closes the pipes
