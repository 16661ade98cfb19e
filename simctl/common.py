"""Helpers every simctl command shares: settings, exit codes, output."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Coroutine
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from redis.exceptions import RedisError
from rich.console import Console

from simconfig import Settings, SettingsError, load_settings
from simctl.fmt import plain
from store.errors import MigrationError, NotFound, Refused, StoreError, Unavailable, first_line

T = TypeVar("T")

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


class Exit(Exception):
    """Stop with a one-line message and an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise Exit(2, str(exc)) from None


def run_async(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine, mapping the project's errors to exit codes and one line."""
    try:
        return asyncio.run(coro_fn())
    except Unavailable as exc:
        raise Exit(2, str(exc)) from None
    except RedisError as exc:
        raise Exit(2, f"cannot reach Redis: {first_line(exc)}") from None
    except (NotFound, Refused, MigrationError) as exc:
        raise Exit(1, str(exc)) from None
    except StoreError as exc:
        raise Exit(1, str(exc)) from None


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return plain(value)  # str() would give 0E-8 for a stored zero
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def print_json(data: object) -> None:
    out.print(json.dumps(data, default=_json_default, indent=2, ensure_ascii=False), markup=False)


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
