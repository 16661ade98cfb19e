"""Helpers every simctl command shares: settings, exit codes, output."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

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


def admin_fingerprint(s: Settings, key: str | None) -> str:
    """The audit fingerprint of an accepted admin key; Exit 1 naming the problem otherwise.
    Only SHA-256 digests are configured and only a prefix of one is ever written."""
    key = key if key is not None else s.sim_admin_key
    if not key:
        raise Exit(1, "refused: this change needs an admin key (--admin-key or SIM_ADMIN_KEY)")
    digest = hashlib.sha256(key.encode()).hexdigest()
    if digest not in s.sim_admin_keys_sha256:
        raise Exit(
            1,
            "refused: the admin key is not accepted (its SHA-256 is not in SIM_ADMIN_KEYS_SHA256)",
        )
    return "sha256:" + digest[:12]
