"""Private services: a Postgres cluster of our own (initdb into a temporary directory, a free
loopback port) and a private redis-server, each optionally bound to a set of CPUs.

The pinned shape runs on them, the chaos drill and the tests use the redis-server command line,
and the tests that stop and crash Postgres use the cluster: none of them may touch the shared
server. Postgres refuses to run as root, so its tools run as the `postgres` OS user then."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path


class ServiceError(Exception):
    """A private service could not be set up (a missing binary, a step that failed)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_list(cpus: Iterable[int]) -> str:
    """`taskset -c` syntax: 0,2,3."""
    return ",".join(str(c) for c in sorted(cpus))


def pinned(cpus: Iterable[int] | None, argv: list[str]) -> list[str]:
    """argv run under `taskset -c CPUS` (its children inherit the set), or as it is."""
    if cpus is None:
        return argv
    taskset = shutil.which("taskset")
    if taskset is None:
        raise ServiceError("taskset is missing (util-linux); it binds processes to cores")
    return [taskset, "-c", cpu_list(cpus), *argv]


# -- redis ------------------------------------------------------------------------------------
def redis_argv(binary: str, port: int, folder: str) -> list[str]:
    """A private, memory-only redis-server on loopback (the bench's, the drill's, the tests')."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", folder]  # fmt: skip


def redis_answers(port: int, *, within_s: float) -> bool:
    """Whether a redis-server on loopback answers PING within the time (polled every 20 ms)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            time.sleep(0.02)
    return False


class PrivateRedis:
    """A memory-only redis-server on a free loopback port, optionally on `cpus`."""

    def __init__(self, cpus: Iterable[int] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError("redis-server is missing (apt-get install redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="simengine-redis-")
        self._argv = pinned(cpus, redis_argv(binary, self.port, self.dir))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """redis-server's pid (taskset execs it, so it is the one we started)."""
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if not redis_answers(self.port, within_s=10):
            self.close()
            raise ServiceError("the private redis-server did not answer PING")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


# -- postgres ---------------------------------------------------------------------------------
def pg_bin(name: str, major: int | None = None) -> str:
    """A Postgres server binary: from $SIMENGINE_PG_BIN, else Debian's folder of the wanted
    major version, else PATH, else the newest Debian folder."""
    if folder := os.environ.get("SIMENGINE_PG_BIN"):
        candidate = Path(folder) / name
        if not candidate.exists():
            raise ServiceError(f"no {name} in {folder} (SIMENGINE_PG_BIN)")
        return str(candidate)
    if major is not None and (Path(f"/usr/lib/postgresql/{major}/bin") / name).exists():
        return f"/usr/lib/postgresql/{major}/bin/{name}"
    found = shutil.which(name)
    if found is not None:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise ServiceError(f"{name} is missing (the Postgres server binaries; or set SIMENGINE_PG_BIN)")


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def conf_value(value: str) -> str:
    """A postgresql.conf value: quoted, quotes doubled (every type accepts the quoted form)."""
    return "'" + value.replace("'", "''") + "'"


class PrivateCluster:
    """initdb into a temporary directory, a free loopback port; start (optionally with the
    postmaster on `cpus`: every backend it forks inherits them), stop, crash, start again."""

    def __init__(
        self,
        conf: Mapping[str, str],
        *,
        major: int | None = None,
        wal_segment_mb: int | None = None,
    ) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="simengine-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._major = major
        try:
            if os.geteuid() == 0:
                owner = pwd.getpwnam("postgres")
                os.chown(self.dir, owner.pw_uid, owner.pw_gid)
                if subprocess.run(_as_owner(["test", "-w", str(self.dir)]), check=False).returncode:
                    raise ServiceError(
                        f"the postgres OS user cannot reach {self.dir}: set TMPDIR to a "
                        "directory every user can traverse (e.g. /tmp)"
                    )
            initdb = [pg_bin("initdb", major), "-D", str(self.data), "-U", "postgres"]
            initdb += ["-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "-N"]
            if wal_segment_mb is not None:
                initdb.append(f"--wal-segsize={wal_segment_mb}")
            self._run(initdb)
            # Ours last: the port, the socket and the address are the private cluster's.
            lines = [f"{name} = {conf_value(value)}" for name, value in conf.items()]
            lines += [
                f"port = {self.port}",
                "listen_addresses = '127.0.0.1'",
                f"unix_socket_directories = {conf_value(str(self.dir))}",
            ]
            with (self.data / "postgresql.conf").open("a", encoding="utf-8") as fh:
                fh.write("\n# simengine private cluster\n" + "\n".join(lines) + "\n")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _run(self, argv: list[str], timeout: float = 120) -> None:
        done = subprocess.run(
            _as_owner(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
            raise ServiceError(f"{Path(argv[0]).name} failed: {lines[-1]}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, cpus: Iterable[int] | None = None) -> None:
        """pg_ctl start, waiting until it accepts connections; the postmaster on `cpus`."""
        ctl = [pg_bin("pg_ctl", self._major), "-D", str(self.data), "-l", str(self.log)]
        try:
            self._run(pinned(cpus, [*ctl, "-w", "-t", "120", "start"]), timeout=150)
        except ServiceError as exc:
            raise ServiceError(f"{exc} (log: {self._log_tail()})") from None

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return "none"
        return lines[-1] if lines else "empty"

    def stop(self, mode: str = "fast", wait: bool = True) -> None:
        """pg_ctl stop -m MODE: `immediate` is a crash (recovery at the next start); `smart`
        without waiting leaves it refusing new connections until the last session ends."""
        self._run(
            [
                pg_bin("pg_ctl", self._major),
                "-D",
                str(self.data),
                "-m",
                mode,
                "-w" if wait else "-W",
                "stop",
            ]
        )

    def running(self) -> bool:
        done = subprocess.run(
            _as_owner([pg_bin("pg_ctl", self._major), "-D", str(self.data), "status"]),
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    def postmaster_pid(self) -> int:
        """From postmaster.pid's first line (pg_ctl's postmaster is not our child)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def close(self) -> None:
        """Stop it if it runs (a fast stop, a crash if that fails) and remove its directory."""
        try:
            if self.data.exists() and self.running():
                try:
                    self.stop("fast")
                except ServiceError:
                    self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
