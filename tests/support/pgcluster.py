"""A private Postgres cluster for the tests that stop, crash and restart the database itself
(the shared server must never be touched). initdb into a temporary directory, a free port,
pg_ctl to start and stop it; run as the `postgres` user when the tests run as root."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path

from tests.support.services import free_port


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
            return str(candidate)
        raise RuntimeError(f"{name} is not installed (Postgres server binaries)")
    return found


def _as_owner(cmd: list[str]) -> list[str]:
    """Postgres refuses to run as root: run its tools as the `postgres` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class PgCluster:
    """initdb once; start, stop (smart, fast or immediate: a crash) and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="simengine-pg-")
        self.data = os.path.join(self.dir, "data")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.dir, True)
        subprocess.run(
            _as_owner([_bin("initdb"), "-D", self.data, "-U", "postgres", "-A", "trust", "-N"]),
            check=True,
            capture_output=True,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start and wait until it accepts connections (pg_ctl -w)."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} "
            "-c fsync=off -c shared_buffers=16MB -c max_connections=40"
        )
        subprocess.run(
            _as_owner(
                [
                    _bin("pg_ctl"),
                    "-D",
                    self.data,
                    "-o",
                    options,
                    "-l",
                    os.path.join(self.dir, "log"),
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self, mode: str = "fast", wait: bool = True) -> None:
        """pg_ctl stop -m MODE: `immediate` is a crash (recovery at the next start); `smart`
        without waiting leaves it refusing new connections ("shutting down") until the last
        session ends."""
        subprocess.run(
            _as_owner(
                [_bin("pg_ctl"), "-D", self.data, "-m", mode, "-W" if not wait else "-w", "stop"]
            ),
            check=True,
            capture_output=True,
        )

    def running(self) -> bool:
        result = subprocess.run(
            _as_owner([_bin("pg_ctl"), "-D", self.data, "status"]),
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def close(self) -> None:
        if self.running():
            self.stop("immediate")
        self._cleanup()
