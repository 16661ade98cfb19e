"""Text from outside is data, never control; keys never on the command line; numbers are ASCII.

Each test is what an attacker or a careless operator tried: a sign-up's name that clears the
screen of whoever lists users, a 120,000-character reason, an admin key visible in `ps`, digits
of another script that parse as money, a tick in year 1 that reached the driver."""

from __future__ import annotations

import json
import re
from pathlib import Path

import asyncpg
import pytest

from tests.acceptance.test_cli import one_line_refusal
from tests.support.keys import with_admin_key
from tests.support.procs import refusal_state, seed_due, simctl

pytestmark = pytest.mark.timeout(180)

KEY = "untrusted-input-admin-key"
ESC = "\033"


@pytest.fixture
def admin_env(env: dict[str, str]) -> dict[str, str]:
    return with_admin_key(env, KEY)


@pytest.mark.parametrize(
    "args",
    [
        ["users", "create", f"evil{ESC}[2J@x.com"],
        ["users", "create", "mallory@example.com", "--name", f"Mallory{ESC}]0;owned\a"],
        ["users", "create", "nl@example.com", "--name", "two\nlines"],
        ["users", "create", "long@example.com", "--name", "a" * 120_000],
        ["users", "adjust", "1", "--usd", "5", "--reason", f"fix{ESC}[2J"],
        ["users", "adjust", "1", "--usd", "5", "--reason", "r" * 120_000],
        ["withdrawals", "request", "1", "BTC", "0.001", "--address", f"bc1q{ESC}[31m"],
        ["withdrawals", "request", "1", "BTC", "0.001", "--address", "a" * 120_000],
    ],
    ids=[
        "email-esc",
        "name-osc",
        "name-newline",
        "name-long",
        "reason-esc",
        "reason-long",
        "address-esc",
        "address-long",
    ],
)
async def test_text_with_control_characters_or_too_long_is_refused_and_nothing_changes(
    admin_env: dict[str, str], pg: asyncpg.Connection, args: list[str]
) -> None:
    await seed_due(pg, 2)
    before = await refusal_state(pg)
    result = simctl(args, admin_env)
    assert result.returncode == 1, result.stderr
    line = one_line_refusal(result.stderr)
    assert "control character" in line or "characters long" in line, line
    assert ESC not in result.stderr + result.stdout
    assert await refusal_state(pg) == before


async def test_text_the_engine_did_not_write_is_printed_escaped(
    admin_env: dict[str, str], pg: asyncpg.Connection
) -> None:
    """Rows from before the checks (an adopted database, another service) still print safely."""
    await seed_due(pg, 2)
    await pg.execute(
        "UPDATE users SET full_name = $1 WHERE id = 1", f"Eve{ESC}[2J{ESC}]0;pwned\a\nfake row"
    )
    for args in (["users", "list"], ["users", "show", "1"], ["users", "list", "--json"]):
        result = simctl(args, admin_env)
        assert result.returncode == 0, (args, result.stderr)
        assert ESC not in result.stdout and "\a" not in result.stdout, args
        assert "fake row" in result.stdout, args
    table = simctl(["users", "list"], admin_env).stdout
    assert "Eve\\x1b[2J" in table
    assert not any(line.startswith("fake row") for line in table.splitlines())


@pytest.mark.parametrize(
    "args",
    [
        ["users", "show", "١"],  # ARABIC-INDIC DIGIT ONE
        ["users", "show", "²"],
        ["users", "show", "-1"],
        ["run", "²"],
        ["reconcile", "--user", "²"],
        ["users", "deposit", "1", "١٠"],
        ["users", "deposit", "1", "1_000"],
        ["users", "adjust", "1", "--usd", "１０", "--reason", "fullwidth digits"],
    ],
    ids=["arabic-id", "superscript-id", "negative-id", "run", "reconcile", "arabic", "us", "fw"],
)
async def test_numbers_are_ascii_digits_only(
    admin_env: dict[str, str], pg: asyncpg.Connection, args: list[str]
) -> None:
    await seed_due(pg, 2)
    before = await refusal_state(pg)
    result = simctl(args, admin_env)
    assert result.returncode in (1, 2), result.stderr
    line = one_line_refusal(result.stderr)
    assert "No such option" not in line
    assert "ASCII" in line or "no user" in line.lower(), line
    assert await refusal_state(pg) == before


@pytest.mark.parametrize(
    ("row", "why"),
    [
        ("BTC,2026-01-01T00:00:00Z,٧٠٠٠", "ASCII"),
        ("BTC,0001-01-01T00:00:00+14:00,7000", "line 2"),
        (f"BTC{ESC}[2J,2026-01-01T00:00:00Z,7000", "line 2"),
    ],
    ids=["arabic-price", "year-one", "control"],
)
async def test_a_bad_csv_row_is_refused_naming_its_line(
    admin_env: dict[str, str], pg: asyncpg.Connection, tmp_path: Path, row: str, why: str
) -> None:
    before = await refusal_state(pg)
    csv = tmp_path / "prices.csv"
    csv.write_text(f"asset,at,price_usd\n{row}\n", encoding="utf-8")
    result = simctl(["prices", "import", str(csv)], admin_env)
    assert result.returncode == 1, result.stderr
    line = one_line_refusal(result.stderr)
    assert "line 2" in line and why in line, line
    assert ESC not in line
    assert await refusal_state(pg) == before


async def test_report_refuses_a_since_beyond_the_calendar_and_writes_nothing_when_refused(
    admin_env: dict[str, str], pg: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_due(pg, 1)
    assert simctl(["scheduler", "--once"], admin_env).returncode == 0
    assert simctl(["worker", "--burst"], admin_env).returncode == 0
    out = tmp_path / "x.png"
    far = simctl(["report", "1", "--out", str(out), "--since", "99999999d"], admin_env)
    assert far.returncode in (1, 2) and "since" in one_line_refusal(far.stderr).lower()
    bad_html = simctl(
        ["report", "1", "--out", str(out), "--html", str(tmp_path / "no" / "such" / "x.html")],
        admin_env,
    )
    assert bad_html.returncode == 2
    one_line_refusal(bad_html.stderr)
    assert not out.exists()


async def test_amounts_print_plainly(admin_env: dict[str, str], pg: asyncpg.Connection) -> None:
    await seed_due(pg, 1, holdings=False)
    refused = simctl(
        ["users", "adjust", "1", "--asset", "BTC", "--amount", "-1", "--reason", "test"], admin_env
    )
    assert refused.returncode == 1
    assert "0E-8" not in refused.stderr
    shown = json.loads(simctl(["users", "show", "1"], admin_env).stdout)  # JSON already
    assert "E-" not in json.dumps(shown)


def test_usage_names_arguments_in_capitals_and_groups_alone_print_their_help(
    env: dict[str, str],
) -> None:
    show = simctl(["users", "show", "--help"], env)
    assert show.returncode == 0
    assert re.search(r"^Usage: .*users show \[OPTIONS\] USER$", show.stdout, re.M), show.stdout
    assert "{user}" not in show.stdout
    for group in (["users"], ["withdrawals"], ["market"], ["prices"]):
        alone = simctl(group, env)
        assert alone.returncode == 0, (group, alone.stderr)
        assert "Usage:" in alone.stdout and "Commands" in alone.stdout
        assert alone.stderr == ""
    change = simctl(["market", "change", "--help"], env).stdout
    assert "x>=1]" not in change and "300" in change
