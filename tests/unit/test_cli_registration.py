"""simctl imports only the command a command line names; --help still lists every command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from simctl.app import COMMANDS, register_all

PROBE = """
import sys
from simctl.app import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
from simctl.app import COMMANDS
commands = {f"simctl.{module}" for module, _ in COMMANDS.values()}
loaded = sorted(m for m in sys.modules if m in commands)
print(",".join(loaded), file=sys.stderr)
"""


def _loaded(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True
    )
    return done.stderr.strip().splitlines()[-1].split(",")


@pytest.mark.parametrize(("command", "module"), [("run", "run"), ("users", "users")])
def test_a_command_line_imports_only_its_command(command: str, module: str) -> None:
    assert _loaded(command, "--help") == [f"simctl.{module}"]


def test_help_lists_every_command() -> None:
    app = register_all()
    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert names == set(COMMANDS)
