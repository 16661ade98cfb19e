"""Time every console page on a scratch database of --users users and --runs runs of history.

The users come from seed-demo (one transaction); the runs are synthetic `sim_runs` rows (each
user's slots 300 s apart, the newest finishing now, so the last hour holds min(runs, users * 12)
of them, as a deployment running every user each 300 s would). `simctl console` (read-only)
serves the database; each page is fetched --repeat times after one warm-up and the table gives
p50, p95 and max in milliseconds. Prints a Markdown table; the database is dropped at the end
unless --keep. --database NAME builds it under that name, or times an existing one as it is
(a copy made with `CREATE DATABASE copy TEMPLATE NAME` keeps the build for another run), and
keeps it.

With --engine, the pages are timed twice: idle, then with a real `simctl scheduler` and
--workers `simctl worker` processes running against the same database (REDIS_URL, default
redis://127.0.0.1:6379/0; the queue is the scratch database's own). Every seeded user is due at
start, so the engine works through a backlog at full speed: the busiest the database gets. The
second table starts once the engine has committed runs and run --settle-s seconds more, and
says how many runs it committed per second while the pages were timed. Checkpoints are off
(SIM_CHECKPOINT_INTERVAL_S=0): the first one over the synthetic history is a one-time cost, not
the steady state."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from simtools.harness.procs import simctl_argv
from simtools.harness.services import PrivateCluster
from store.db import connect
from store.seed import seed_demo

PAGES = (
    "/",
    "/api/overview",
    "/users",
    "/users?state=failing",
    "/users?state=paused",
    "/users?strategy=dca",
    "/users?q={email}",
    "/users?after={mid}",
    "/users/{mid}",
    "/api/users/{mid}/series",
    "/failing",
    "/withdrawals?status=pending",
    "/audit",
)


def _url(base: str, database: str) -> str:
    return urlunsplit(urlsplit(base)._replace(path="/" + database))


async def _create(admin: str, database: str) -> None:
    conn = await connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


async def _build(url: str, users: int, runs: int) -> dict[str, str]:
    conn = await connect(url)
    try:
        t0 = time.monotonic()
        await seed_demo(conn, users, 1)
        print(f"seeded {users} users in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        t0 = time.monotonic()
        # Each user's runs in slot order, the newest finishing up to a few minutes ago.
        await conn.execute(
            """INSERT INTO sim_runs (user_id, scheduled_for, started_at, finished_at, outcome,
                                     trades_count)
               SELECT u, s, s + interval '20 ms', s + interval '40 ms', 'applied', (i % 3)::int
                 FROM (SELECT i, (i % $1) + 1 AS u,
                              now() - make_interval(secs => 300 * (($2 - 1 - i) / $1) + (i % $1) * 300.0 / $1) AS s
                         FROM generate_series(0, $2 - 1) AS i) g""",
            users,
            runs,
        )
        await conn.execute(
            "UPDATE users SET sim_fail_count = 2, sim_last_error = 'timeout',"
            " sim_failing_since = now() WHERE id % 10000 = 0"
        )
        await conn.execute("UPDATE users SET sim_paused = true WHERE id % 1000 = 1")
        await conn.execute("UPDATE users SET sim_strategy = 'dca' WHERE id % 7 = 0")
        await conn.execute("ANALYZE")
        print(f"wrote {runs} runs in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    finally:
        await conn.close()
    return await _values(url, users)


async def _exists(admin: str, database: str) -> bool:
    conn = await connect(admin)
    try:
        found: bool = await conn.fetchval(
            "SELECT exists (SELECT 1 FROM pg_database WHERE datname = $1)", database
        )
        return found
    finally:
        await conn.close()


async def _values(url: str, users: int) -> dict[str, str]:
    """What the page paths are filled with: the middle user's id and its email in upper case."""
    conn = await connect(url)
    try:
        email = await conn.fetchval("SELECT upper(email) FROM users WHERE id = $1", users // 2)
    finally:
        await conn.close()
    return {"email": email, "mid": str(users // 2)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get_ms(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
        if not 200 <= response.status < 300:
            raise RuntimeError(f"{url}: HTTP {response.status}")
    return (time.perf_counter() - t0) * 1000


def _time_pages(base: str, values: dict[str, str], repeat: int, title: str) -> None:
    print(f"| page ({title}) | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|")
    for page in PAGES:
        path = page.format(**values)
        _get_ms(base + path)  # warm-up: plans and pool
        times = sorted(_get_ms(base + path) for _ in range(repeat))
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        shown = page.replace("{email}", "EMAIL").replace("{mid}", "ID")
        print(
            f"| `{shown}` | {statistics.median(times):.1f} | {p95:.1f} | {times[-1]:.1f} |",
            flush=True,
        )


async def _last_run_id(url: str) -> int:
    conn = await connect(url)
    try:
        value: int = await conn.fetchval("SELECT coalesce(max(id), 0) FROM sim_runs")
        return value
    finally:
        await conn.close()


def _start_engine(env: dict[str, str], workers: int, log: str) -> list[subprocess.Popen[bytes]]:
    engine_env = {**env, "SIM_CHECKPOINT_INTERVAL_S": "0", "SIM_METRICS_PORT": "0"}
    with open(log, "ab") as out:
        return [
            subprocess.Popen(simctl_argv(kind), env=engine_env, stdout=out, stderr=out)
            for kind in ["scheduler"] + ["worker"] * workers
        ]


def _stop_engine(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench-console", description=__doc__)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--database",
        help="the scratch database's name: built if it does not exist, used as it is if it does "
        "(--users and --runs must then be the ones it was built with), and kept at the end",
    )
    parser.add_argument(
        "--engine",
        action="store_true",
        help="time the pages idle, then again with a scheduler and --workers workers running",
    )
    parser.add_argument("--workers", type=int, default=1, help="workers with --engine")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=30.0,
        help="with --engine, seconds the engine runs before the pages are timed (its start, "
        "when every NULL slot is materialised and the first claims ramp up, is not the steady "
        "state)",
    )
    parser.add_argument(
        "--private-cluster",
        action="store_true",
        help="run it all in a Postgres cluster of its own (initdb in a temporary folder, removed "
        "at the end) with the server's settings and autovacuum on, as `simctl bench --history` "
        "does: a production server vacuums, and a shared test server may not",
    )
    args = parser.parse_args()
    admin = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    if args.private_cluster:
        if args.database:
            parser.error("--database names a database of the shared server, not a private cluster")
        cluster = _private_cluster(admin)
        try:
            _bench(args, cluster.url())
        finally:
            cluster.close()
        return
    _bench(args, admin)


# The server's settings a private cluster copies (their values as `SHOW` gives them): memory,
# WAL, commit and planner costs; never a path, a port or an address.
_COPIED = (
    "shared_buffers", "work_mem", "maintenance_work_mem", "effective_cache_size",
    "max_connections", "max_wal_size", "min_wal_size", "synchronous_commit", "fsync",
    "full_page_writes", "jit", "random_page_cost", "effective_io_concurrency",
    "max_parallel_workers_per_gather", "default_statistics_target", "autovacuum_naptime",
    "autovacuum_max_workers",
)  # fmt: skip


async def _server_conf(admin: str) -> tuple[dict[str, str], int]:
    conn = await connect(admin)
    try:
        rows = await conn.fetch(
            "SELECT name, current_setting(name) AS value FROM unnest($1::text[]) AS name",
            list(_COPIED),
        )
        major: int = await conn.fetchval("SELECT current_setting('server_version_num')::int")
    finally:
        await conn.close()
    return {r["name"]: r["value"] for r in rows}, major // 10000


def _private_cluster(admin: str) -> PrivateCluster:
    """A cluster of our own with the server's settings and autovacuum on, started."""
    conf, major = asyncio.run(_server_conf(admin))
    conf.update(autovacuum="on", track_counts="on")
    cluster = PrivateCluster(conf, major=major)
    print(f"private cluster: {cluster.dir} (autovacuum on)", file=sys.stderr)
    try:
        cluster.init()
        cluster.start()
    except BaseException:
        cluster.close()
        raise
    return cluster


def _bench(args: argparse.Namespace, admin: str) -> None:
    database = args.database or f"simengine_consolebench_{os.getpid()}"
    url = _url(admin, database)
    env = {**os.environ, "DATABASE_URL": url, "SIM_SEED": "7"}
    if args.database and asyncio.run(_exists(admin, database)):
        values = asyncio.run(_values(url, args.users))
    else:
        asyncio.run(_create(admin, database))
        subprocess.run(simctl_argv("migrate"), env=env, check=True, capture_output=True)
        values = asyncio.run(_build(url, args.users, args.runs))
    port = _free_port()
    server = subprocess.Popen(simctl_argv("console", "--port", str(port)), env=env)
    base = f"http://127.0.0.1:{port}"
    engine: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get_ms(base + "/favicon.ico")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the console did not start") from None
                time.sleep(0.1)
        size = f"{args.users} users, {args.runs} runs"
        _time_pages(base, values, args.repeat, size + (", engine idle" if args.engine else ""))
        if args.engine:
            log = tempfile.mkstemp(prefix="consolebench-engine-", suffix=".log")[1]
            print(f"engine log: {log}", file=sys.stderr)
            engine = _start_engine(env, args.workers, log)
            synthetic = asyncio.run(_last_run_id(url))
            deadline = time.monotonic() + 300
            while asyncio.run(_last_run_id(url)) < synthetic + 500:  # the engine is running
                if time.monotonic() > deadline or any(p.poll() is not None for p in engine):
                    raise SystemExit(f"the engine did not start committing runs (see {log})")
                time.sleep(0.5)
            time.sleep(args.settle_s)
            first, t0 = asyncio.run(_last_run_id(url)), time.monotonic()
            print()
            _time_pages(
                base,
                values,
                args.repeat,
                f"{size}, engine running: 1 scheduler, {args.workers} worker(s)",
            )
            rate = (asyncio.run(_last_run_id(url)) - first) / (time.monotonic() - t0)
            print(f"\nThe engine committed {rate:.0f} runs/s while the pages were timed.")
    finally:
        if engine:
            _stop_engine(engine)
        server.terminate()
        server.wait(30)
        if not args.keep and not args.database:

            async def drop() -> None:
                conn = await connect(admin)
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                finally:
                    await conn.close()

            asyncio.run(drop())


if __name__ == "__main__":
    main()
