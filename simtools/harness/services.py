"""Private services: a Postgres cluster of our own (initdb into a folder of its own, a free
loopback port) and a private redis-server, each optionally bound to a set of CPUs.

The bench's pinned shape runs on them, the chaos drill crashes and restarts them, the demo runs
an embedded redis-server with them, and the tests that stop and crash a service use them: none
of them may touch the shared servers. Postgres refuses to run as root, so its tools run as the
`postgres` OS user then."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path

from simtools.harness.errors import ToolError


class ServiceError(ToolError):
    """A private service could not be set up (a missing binary, a step that failed)."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
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
    """A memory-only redis-server on loopback."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", folder]  # fmt: skip


def redis_answers(
    port: int, *, within_s: float, proc: subprocess.Popen[bytes] | None = None
) -> bool:
    """Whether a redis-server on loopback answers PING within the time (polled every 20 ms);
    False at once when `proc`, the server being waited for, has exited."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            time.sleep(0.02)
    return False


class PrivateRedis:
    """A memory-only redis-server on a free loopback port: started, stopped (really), started
    again on the same port, flushed, restarted as an operator would.

    `binary` defaults to redis-server on PATH; `folder` to a temporary one, removed by close()
    or when the object goes, whoever forgot to close it; `cpus` binds it with taskset (which
    execs it: the pid is redis-server's); `new_session` keeps a terminal's Ctrl-C away from it."""

    def __init__(
        self,
        *,
        cpus: Iterable[int] | None = None,
        binary: str | Path | None = None,
        folder: Path | None = None,
        new_session: bool = False,
    ) -> None:
        found = str(binary) if binary is not None else shutil.which("redis-server")
        if found is None:
            raise ServiceError("redis-server is missing (apt-get install redis-server)")
        self.port = free_port()
        if folder is None:
            self.dir = Path(tempfile.mkdtemp(prefix="simengine-redis-"))
            self._cleanup: weakref.finalize[..., PrivateRedis] | None = weakref.finalize(
                self, shutil.rmtree, str(self.dir), True
            )
        else:
            folder.mkdir(parents=True, exist_ok=True)
            self.dir = folder
            self._cleanup = None
        self._argv = pinned(cpus, redis_argv(found, self.port, str(self.dir)))
        self._new_session = new_session
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        """Start it (again, after stop(), on the same port) and wait until it answers PING."""
        self.proc = subprocess.Popen(
            self._argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=self._new_session,
        )
        if not redis_answers(self.port, within_s=10, proc=self.proc):
            self.stop()
            raise ServiceError("the private redis-server did not answer PING")

    def stop(self, *, graceful: bool = False) -> None:
        """SIGKILL it (SIGTERM, up to 10 s, when `graceful`); its folder stays."""
        if self.proc is not None and self.proc.poll() is None:
            if graceful:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            else:
                self.proc.kill()
            self.proc.wait()
        self.proc = None

    async def flushall(self) -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(self.url, socket_timeout=5)
        try:
            await client.flushall()
        finally:
            await client.aclose()

    async def restart(self) -> float:
        """SHUTDOWN NOSAVE (everything in it is lost), then start again; seconds it was down."""
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

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

    def close(self) -> None:
        """Stop for good and remove its folder if it made it."""
        self.stop()
        if self._cleanup is not None:
            self._cleanup()


# -- postgres ---------------------------------------------------------------------------------
def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        done = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None


def pg_bin(name: str, major: int | None = None) -> str:
    """A Postgres server binary: from $SIMENGINE_PG_BIN, else Debian's folder of the wanted
    major version, else pg_config's --bindir, else PATH, else the newest of
    /usr/lib/postgresql/*/bin."""
    if folder := os.environ.get("SIMENGINE_PG_BIN"):
        candidate = Path(folder) / name
        if not candidate.exists():
            raise ServiceError(f"no {name} in {folder} (SIMENGINE_PG_BIN)")
        return str(candidate)
    if major is not None and (Path(f"/usr/lib/postgresql/{major}/bin") / name).exists():
        return f"/usr/lib/postgresql/{major}/bin/{name}"
    bindir = _pg_config_bindir()
    if bindir is not None and (bindir / name).exists():
        return str(bindir / name)
    found = shutil.which(name)
    if found is not None:
        return found
    newest = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else -1,
        reverse=True,
    )
    if newest:
        return str(newest[0])
    raise ServiceError(f"{name} is missing (the Postgres server binaries; or set SIMENGINE_PG_BIN)")


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def conf_value(value: str) -> str:
    """A postgresql.conf value: quoted, quotes doubled (every type accepts the quoted form)."""
    return "'" + value.replace("'", "''") + "'"


class PrivateCluster:
    """A Postgres cluster of our own: init() runs initdb with `conf` appended to its
    postgresql.conf; start (optionally with the postmaster on `cpus`: every backend it forks
    inherits them), stop (smart, fast or immediate: a crash), start again; close.

    The port is chosen at construction, so a URL is known before init(). `folder` (made if
    missing; the caller removes it) defaults to a temporary one that close() removes. `major`
    picks Debian's binaries of that version when installed; `wal_segment_mb` is initdb's."""

    def __init__(
        self,
        conf: Mapping[str, str],
        *,
        folder: Path | None = None,
        major: int | None = None,
        wal_segment_mb: int | None = None,
    ) -> None:
        self.port = free_port()
        self._owned = folder is None
        if folder is None:
            self.dir = Path(tempfile.mkdtemp(prefix="simengine-pg-"))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            self.dir = folder
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._conf = dict(conf)
        self._major = major
        self._wal_segment_mb = wal_segment_mb

    def init(self) -> None:
        """initdb (trust, UTF8, C.UTF-8, no sync) and the configuration; on failure a folder of
        its own is removed."""
        try:
            if os.geteuid() == 0:
                owner = pwd.getpwnam("postgres")
                os.chown(self.dir, owner.pw_uid, owner.pw_gid)
                if subprocess.run(_as_owner(["test", "-w", str(self.dir)]), check=False).returncode:
                    raise ServiceError(
                        f"the postgres OS user cannot reach {self.dir}: put it under a "
                        "directory every user can traverse (e.g. /tmp)"
                    )
            initdb = [pg_bin("initdb", self._major), "-D", str(self.data), "-U", "postgres"]
            initdb += ["-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "-N"]
            if self._wal_segment_mb is not None:
                initdb.append(f"--wal-segsize={self._wal_segment_mb}")
            self._run(initdb)
            # Ours last: the port, the socket and the address are the private cluster's.
            lines = [f"{name} = {conf_value(value)}" for name, value in self._conf.items()]
            lines += [
                f"port = {self.port}",
                "listen_addresses = '127.0.0.1'",
                f"unix_socket_directories = {conf_value(str(self.dir))}",
            ]
            with (self.data / "postgresql.conf").open("a", encoding="utf-8") as fh:
                fh.write("\n# simengine private cluster\n" + "\n".join(lines) + "\n")
        except BaseException:
            if self._owned:
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
        ctl = [pg_bin("pg_ctl", self._major), "-D", str(self.data), "-m", mode]
        self._run([*ctl, "-w" if wait else "-W", "stop"])

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
        """Stop it if it runs (a fast stop, a crash if that fails); remove a folder of its own."""
        try:
            if self.data.exists() and self.running():
                try:
                    self.stop("fast")
                except ServiceError:
                    self.stop("immediate")
        finally:
            if self._owned:
                shutil.rmtree(self.dir, ignore_errors=True)
