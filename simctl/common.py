"""Helpers every simctl command shares: settings, exit codes, output."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from engine.text import is_control
from simctl.fmt import plain

if TYPE_CHECKING:
    from rich.console import Console

    from simconfig import Settings

T = TypeVar("T")


class LazyConsole:
    """A rich Console made on first use: importing rich costs a short command ~0.05 s CPU."""

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr, highlight=False, soft_wrap=True)
        return self._console

    def print(self, *objects: Any, **kwargs: Any) -> None:
        plain = (
            self._console is None
            and len(objects) == 1
            and isinstance(objects[0], str)
            and set(kwargs) <= {"markup"}
            and (kwargs.get("markup") is False or "[" not in objects[0])
        )
        if plain:  # a line of text needs no rich (what most commands print)
            print(objects[0], file=sys.stderr if self._stderr else sys.stdout, flush=True)
            return
        self.get().print(*objects, **kwargs)


err = LazyConsole(stderr=True)
out = LazyConsole(stderr=False)


class Exit(Exception):
    """Stop with a one-line message and an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def settings() -> Settings:
    from simconfig import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        raise Exit(2, str(exc)) from None


def run_async(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end; what it raises reaches simctl.app.main, which maps the
    project's errors to an exit code and one line."""
    return asyncio.run(coro_fn())


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return plain(value)  # str() would give 0E-8 for a stored zero
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def print_json(data: object) -> None:
    text = json.dumps(data, default=_json_default, indent=2, ensure_ascii=False)
    # json escapes U+0000..U+001F inside strings; DEL, C1 controls and bidirectional overrides
    # in a stored name would reach the terminal raw. Any control character but the indentation's
    # newlines is inside a string, where \uXXXX is valid JSON.
    if any(c != "\n" and is_control(c) for c in text):
        text = "".join(f"\\u{ord(c):04x}" if c != "\n" and is_control(c) else c for c in text)
    out.print(text, markup=False)


# Where an admin key comes from. Never a command-line argument: `ps` shows every process's
# arguments to every user of the host, and shells keep them in their history.
KEY_SOURCES = "SIM_ADMIN_KEY or --admin-key-file PATH"
KeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--admin-key-file",
        help="Read the admin key from this file (one trailing newline is ignored); it must not "
        "be accessible by group or others (chmod 600). Default: SIM_ADMIN_KEY, else a hidden "
        "prompt on a terminal. A key is never accepted as an argument.",
        show_default=False,
        dir_okay=False,
    ),
]
_KEY_OPTION = "--admin-key"


def refuse_key_arguments(args: Sequence[str]) -> None:
    """Exit 2 if a command line carries an admin key as an argument; the key is not echoed."""
    for arg in args:
        if arg == "--":
            return
        if arg == _KEY_OPTION or arg.startswith(_KEY_OPTION + "="):
            raise Exit(
                2,
                f"{_KEY_OPTION} is refused: a key on the command line is visible to every user "
                f"of the host (ps, shell history); use {KEY_SOURCES}",
            )


def read_key_file(path: Path) -> str:
    """The key in `path` (one trailing newline stripped); Exit 2 naming the path if it cannot be
    read, is empty, or is accessible by group or others (as ssh refuses such a private key)."""
    try:
        with path.open("rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if stat.S_ISREG(mode) and mode & 0o077:
                raise Exit(
                    2,
                    f"admin key file {path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}): chmod 600 it",
                )
            data = f.read(64 * 1024)
    except OSError as exc:
        raise Exit(2, f"cannot read admin key file {path}: {exc.strerror or exc}") from None
    try:
        key = data.decode()
    except UnicodeDecodeError:
        raise Exit(2, f"admin key file {path} is not UTF-8 text") from None
    key = key.removesuffix("\n").removesuffix("\r")
    if not key:
        raise Exit(2, f"admin key file {path} is empty")
    return key


def _prompted_key() -> str | None:
    """A key typed at a hidden prompt, when a person is at a terminal; None otherwise (a script
    gets the refusal, never a prompt that waits for ever)."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    import getpass

    try:
        return getpass.getpass("admin key: ") or None
    except EOFError:
        return None


def admin_fingerprint(s: Settings, key_file: Path | None) -> str:
    """The audit fingerprint of an accepted admin key; Exit 1 naming the problem otherwise.
    The key comes from `key_file`, else SIM_ADMIN_KEY, else a hidden prompt on a terminal.
    Only SHA-256 digests are configured and only a prefix of one is ever written."""
    key = read_key_file(key_file) if key_file is not None else s.sim_admin_key
    if not key:
        key = _prompted_key()
    if not key:
        raise Exit(1, f"refused: this change needs an admin key ({KEY_SOURCES})")
    from engine.adminkeys import accepted_fingerprint

    fingerprint = accepted_fingerprint(key, s.sim_admin_keys_sha256)
    if fingerprint is None:
        raise Exit(
            1,
            "refused: the admin key is not accepted (its SHA-256 is not in SIM_ADMIN_KEYS_SHA256)",
        )
    return fingerprint
