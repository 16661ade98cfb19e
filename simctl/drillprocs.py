"""The chaos drill's processes: a private Postgres cluster and redis-server, the supervisor that
keeps schedulers and workers running, and a monitor connection that outlives a Postgres crash."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bench.services import free_port, redis_answers, redis_argv
from store.db import connect
from store.errors import StoreError

PG_BIN = Path(os.environ.get("SIMENGINE_PG_BIN", "/usr/lib/postgresql/15/bin"))
SIMCTL = [sys.executable, "-m", "simctl"]


class DrillError(Exception):
    """The drill could not set itself up (missing binary, a step that failed): exit 2."""


# -- private services -------------------------------------------------------------------------


def now_utc() -> datetime:
    return datetime.now(UTC)


class PgCluster:
    """A private Postgres cluster (initdb) in a temp directory; crash-restartable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pgdata"
        self.sock = root / "pgsock"
        self.log = root / "postgres.log"
        self.port = free_port()
        self.started = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _cmd(self, *args: str) -> list[str]:
        # initdb and postgres refuse to run as root: run them as the postgres OS user then.
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            self._cmd(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise DrillError(f"{Path(args[0]).name} failed: {(done.stderr or done.stdout).strip()}")

    def init(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise DrillError(f"no initdb in {PG_BIN} (set SIMENGINE_PG_BIN)")
        self.sock.mkdir()
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.root, self.sock):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            reachable = subprocess.run(self._cmd("test", "-w", str(self.root)), check=False)
            if reachable.returncode != 0:
                raise DrillError(
                    f"the postgres OS user cannot reach {self.root}: "
                    "choose a --workdir every user can traverse (e.g. /tmp)"
                )
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        # Close to the shared server's settings (fsync on, 128 MB buffers, autovacuum off).
        conf = f"""
port = {self.port}
listen_addresses = '127.0.0.1'
unix_socket_directories = '{self.sock}'
fsync = on
synchronous_commit = on
shared_buffers = 128MB
max_connections = 100
autovacuum = off
max_wal_size = 1GB
min_wal_size = 80MB
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
"""
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as fh:
            fh.write(conf)

    def start(self) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "120",
            "start",
        )
        self.started = True

    def crash(self) -> None:
        """`pg_ctl stop -m immediate`: every backend dies, recovery replays the WAL at start."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(Exception):
                self._run(
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                )
            self.started = False


class RedisProc:
    """A private redis-server on loopback: flushable, restartable on the same port."""

    def __init__(self, root: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise DrillError("redis-server is not installed")
        self.binary = binary
        self.dir = root / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            redis_argv(self.binary, self.port, str(self.dir)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not redis_answers(self.port, within_s=10):
            raise DrillError("the private redis-server did not answer PING")

    async def flushall(self) -> None:
        client = Redis.from_url(self.url, socket_timeout=5)
        try:
            await client.flushall()
        finally:
            await client.aclose()

    async def restart(self) -> float:
        """SHUTDOWN NOSAVE (everything in it is lost), then start again; seconds it was down."""
        client = Redis.from_url(self.url, socket_timeout=5)
        try:
            with contextlib.suppress(RedisError, OSError):
                await client.shutdown(nosave=True)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
        down = time.monotonic()
        if self.proc is not None:
            await asyncio.to_thread(self.proc.wait, 10)
        await asyncio.to_thread(self.start)
        return time.monotonic() - down

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


# -- the supervisor ---------------------------------------------------------------------------
@dataclass
class Child:
    role: str  # "worker" or "scheduler"
    index: int
    gen: int
    popen: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = False  # by the drill: its exit is expected

    @property
    def app(self) -> str:
        return app_name(self.role, self.index, self.gen)

    def alive(self) -> bool:
        return self.popen.poll() is None


def app_name(role: str, index: int, gen: int) -> str:
    """The application_name a process's Postgres backends carry (set through its DSN)."""
    return f"drill-{role[0]}{index}-{gen}"


def with_app_name(url: str, name: str) -> str:
    # asyncpg passes unknown DSN parameters to the server as settings.
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


def last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


@dataclass
class Supervisor:
    """Keeps `schedulers` + `workers` simctl processes running; counts those that exit by
    themselves (a finding: the processes are built to outlive every fault of the drill)."""

    env: dict[str, str]
    db_url: str
    logdir: Path
    cwd: Path
    restart_delay_s: float
    slots: dict[tuple[str, int], Child] = field(default_factory=dict)
    gens: Counter[tuple[str, int]] = field(default_factory=Counter)
    exits: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0
    extra_pids: set[int] = field(default_factory=set)
    stopping: bool = False
    _pending: set[tuple[str, int]] = field(default_factory=set)

    def start(self, role: str, index: int) -> Child:
        key = (role, index)
        self.gens[key] += 1
        gen = self.gens[key]
        log_path = self.logdir / f"{role}{index}-{gen}.log"
        env = {**self.env, "DATABASE_URL": with_app_name(self.db_url, app_name(role, index, gen))}
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [*SIMCTL, role],
                env=env,
                cwd=self.cwd,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        child = Child(role, index, gen, popen, log_path)
        self.slots[key] = child
        return child

    def alive(self, role: str) -> list[Child]:
        return [c for (r, _), c in sorted(self.slots.items()) if r == role and c.alive()]

    def by_app(self, name: str) -> Child | None:
        for child in self.slots.values():
            if child.app == name and child.alive():
                return child
        return None

    def kill(self, child: Child) -> None:
        child.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.popen.pid, signal.SIGKILL)

    async def watch(self) -> None:
        """Restart any process that is gone (after restart_delay_s); record unexpected exits."""
        while not self.stopping:
            for key, child in list(self.slots.items()):
                if key in self._pending or child.alive():
                    continue
                if not child.killed:
                    at = now_utc()
                    self.exits.append(
                        {
                            "role": child.role,
                            "index": child.index,
                            "exit_code": child.popen.returncode,
                            "at": at.isoformat(),
                            "last_line": last_line(child.log_path),
                        }
                    )
                self._pending.add(key)
                asyncio.get_running_loop().call_later(self.restart_delay_s, self._restart, key)
            await asyncio.sleep(0.1)

    def _restart(self, key: tuple[str, int]) -> None:
        self._pending.discard(key)
        if not self.stopping:
            self.start(*key)
            self.restarts += 1

    async def stop_all(self, grace_s: float = 30) -> None:
        """SIGTERM every process (their graceful stop), SIGKILL what is still there after grace_s."""
        self.stopping = True
        children = [c for c in self.slots.values() if c.alive()]
        for child in children:
            child.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.popen.pid, signal.SIGTERM)

        async def exited(child: Child) -> None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(child.popen.wait, grace_s)

        await asyncio.gather(*(exited(c) for c in children))
        self.kill_all()

    def kill_all(self) -> None:
        """SIGKILL every child still running (the last resort of any exit path)."""
        self.stopping = True
        for child in self.slots.values():
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.popen.pid, signal.SIGKILL)
                child.popen.wait()
        for pid in list(self.extra_pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- a connection that survives the Postgres crash it watches -------------------------------
class Monitor:
    def __init__(self, url: str) -> None:
        self.url = with_app_name(url, "drill-monitor")
        self.conn: asyncpg.Connection | None = None

    async def call(self, fn: Callable[[asyncpg.Connection], Any]) -> Any:
        """fn(conn), reconnecting first if needed; None while Postgres is away."""
        try:
            if self.conn is None or self.conn.is_closed():
                self.conn = await connect(self.url)
            return await fn(self.conn)
        except (StoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await self.close()
            return None

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.terminate()
            self.conn = None
