"""Admin keys handed to simctl as an operator does: in a file only its owner can read (a key is
never a command-line argument, where `ps` shows it)."""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path


@functools.cache
def _directory() -> Path:
    path = Path(tempfile.mkdtemp(prefix="simctl-keys-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def key_file(key: str) -> str:
    """The path of a mode-600 file holding `key`, one per key and process."""
    path = _directory() / hashlib.sha256(key.encode()).hexdigest()[:16]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return str(path)


def key_args(key: str) -> list[str]:
    """The options that hand simctl `key`."""
    return ["--admin-key-file", key_file(key)]


def with_admin_key(env: dict[str, str], key: str) -> dict[str, str]:
    """`env` with `key` accepted (its digest in SIM_ADMIN_KEYS_SHA256) and presented (SIM_ADMIN_KEY)."""
    return {
        **env,
        "SIM_ADMIN_KEYS_SHA256": hashlib.sha256(key.encode()).hexdigest(),
        "SIM_ADMIN_KEY": key,
    }
