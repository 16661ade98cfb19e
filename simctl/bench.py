"""simctl bench: end-to-end user-runs/s against baselines measured in the same run.

Phases: the database ceiling (shared/bench/ceiling.pgb with pgbench), pgbench TPC-B as context,
the naive design (one job and one transaction per run), then simengine itself (scheduler and
workers as real processes) at peak and at half of peak, claim times by population, worker RSS,
CPU per run by process, and reconcile. Ratios are what to read; absolute figures move with the
machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from simconfig import Settings
from store.db import connect
from store.market import ensure_market
from store.migrate import migrate
from store.ops import reconcile
from store.seed import seed_demo

# The shared ceiling script sits next to the checkout (scripts/bench runs from its root); an
# installed package has no checkout, so the path is the working directory's or the variable's.
CEILING_ENV = "SIMENGINE_BENCH_CEILING"


def ceiling_file() -> Path:
    """shared/bench/ceiling.pgb: $SIMENGINE_BENCH_CEILING, else ../shared/bench/ from here."""
    return Path(os.environ.get(CEILING_ENV) or "../shared/bench/ceiling.pgb").resolve()


@dataclass
class Plan:
    """Sizes of each phase; --quick shrinks them to finish in under two minutes."""

    ceiling_users: int
    tpcb_scale: int
    tpcb_seconds: int
    naive_users: int
    engine_users: int
    sustained_s: int
    claim_sizes: list[int]
    rss_runs: int
    peaks: int = 3  # engine peaks; the best is reported
    workers: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(40_000, 1, 2, 2_000, 20_000, 8, [10_000, 50_000], 20_000, peaks=1)
        return cls(400_000, 10, 10, 10_000, 100_000, 60, [10_000, 100_000, 1_000_000], 1_000_000)


def _db_url(base: str, name: str) -> str:
    return urlunsplit(urlsplit(base)._replace(path="/" + name))


def _say(progress: Callable[[str], None], message: str) -> None:
    progress(message)


async def _fresh_db(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _db_url(admin_url, name)


async def _drop_db(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _population(
    url: str, users: int, *, due: bool = True, settings: Settings | None = None
) -> None:
    conn = await connect(url)
    try:
        await migrate(conn)
        if settings is not None:  # the stored market: SIM_SEED's, else seed 42 (reproducible)
            await ensure_market(conn, settings, seed_if_unset=42)
        await seed_demo(conn, users, seed=11)
        if due:
            await conn.execute("UPDATE users SET sim_next_run_at = now() - interval '1 hour'")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def _seconds_until(conn: asyncpg.Connection, at: datetime) -> float:
    """How far `at` is ahead of the server's clock (negative once passed)."""
    seconds: float = await conn.fetchval(
        "SELECT extract(epoch FROM $1::timestamptz - clock_timestamp())::float8", at
    )
    return seconds


async def _checkpoint(conn: asyncpg.Connection) -> None:
    """Start a timed phase with no checkpoint in progress: a checkpoint left running by the
    previous phase's writes (the ceiling writes gigabytes of WAL) cost the next phase 10-15 %
    (measured: 15,000 runs/s before the ceiling phase, 13,700 right after). Every phase starts
    from this same state. Needs superuser or pg_checkpoint; without it, phases run as they are."""
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CHECKPOINT")


def pgbench_binary() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    raise SystemExit(
        "bench: pgbench is missing; install it (apt-get install postgresql-client) and rerun"
    )


def _pgbench(clients: int, args: list[str], url: str) -> float:
    """tps of one pgbench run with prepared statements and up to two threads."""
    common = ["-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2))]
    out = subprocess.run(
        [pgbench_binary(), *common, *args, url],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    match = re.search(r"tps = ([0-9.]+)", out.stdout)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(match.group(1))


async def ceiling(
    admin_url: str, prefix: str, plan: Plan, say: Callable[[str], None]
) -> dict[str, Any]:
    """shared/bench/ceiling.pgb at 1, 2 and 4 clients, each on a fully due population."""
    url = await _fresh_db(admin_url, f"{prefix}_ceiling")
    await _population(url, plan.ceiling_users)
    results: dict[str, Any] = {}
    for clients in (1, 2, 4):
        conn = await connect(url)
        try:
            await conn.execute("TRUNCATE sim_runs, trades RESTART IDENTITY CASCADE")
            await conn.execute(
                "UPDATE users SET sim_next_run_at = now() - interval '1 hour', sim_claimed_until = NULL"
            )
            await conn.execute("VACUUM ANALYZE users, portfolio")
            await _checkpoint(conn)
        finally:
            await conn.close()
        per_client = max(1, plan.ceiling_users // (200 * clients) - 1)
        say(f"ceiling: {clients} client(s) × {per_client} statements of 200 user-runs")
        tps = _pgbench(clients, ["-n", "-t", str(per_client), "-f", str(ceiling_file())], url)
        conn = await connect(url)
        try:
            written = await conn.fetchval("SELECT count(*) FROM sim_runs")
        finally:
            await conn.close()
        expected = clients * per_client * 200
        results[str(clients)] = {
            "tps": round(tps, 2),
            "runs_per_s": round(tps * 200, 1),
            "valid": written == expected,
            "runs_written": written,
        }
    await _drop_db(admin_url, f"{prefix}_ceiling")
    valid = [r["runs_per_s"] for r in results.values() if r["valid"]]
    return {"by_clients": results, "best_runs_per_s": max(valid) if valid else None}


async def tpcb(
    admin_url: str, prefix: str, plan: Plan, say: Callable[[str], None]
) -> dict[str, Any]:
    url = await _fresh_db(admin_url, f"{prefix}_tpcb")
    say(f"TPC-B: pgbench -i -s {plan.tpcb_scale}")
    await asyncio.to_thread(
        subprocess.run,
        [pgbench_binary(), "-i", "-q", "-s", str(plan.tpcb_scale), url],
        capture_output=True,
        check=True,
        timeout=600,
    )
    results = {}
    for clients in (1, 4, 16):
        conn = await connect(url)
        try:
            await _checkpoint(conn)
        finally:
            await conn.close()
        say(f"TPC-B: {clients} client(s), {plan.tpcb_seconds} s")
        results[str(clients)] = round(_pgbench(clients, ["-T", str(plan.tpcb_seconds)], url), 1)
    await _drop_db(admin_url, f"{prefix}_tpcb")
    return {"tps_by_clients": results, "best_tps": max(results.values())}


def _simctl_env(url: str, settings: Settings, queue: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIM_")}
    env.update(
        DATABASE_URL=url,
        REDIS_URL=settings.redis_url,
        SIM_QUEUE_NAME=queue,
        **({} if settings.sim_seed is None else {"SIM_SEED": str(settings.sim_seed)}),
        SIM_LOG_LEVEL="warning",
        SIM_LOG_JSON="true",
        **extra,
    )
    return env


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "simctl", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def _wait_runs(url: str, target: int, limit_s: float) -> float:
    """Seconds until sim_runs holds `target` rows, polled every 50 ms.

    A count(*) of sim_runs every poll would itself cost the server a scan of a table growing by
    thousands of rows a second, charged to the engine being measured; so the poll reads the
    highest committed id (one primary-key probe) and counts only once that reaches the target.
    Ids are only an upper bound of the count (a rolled-back batch leaves a gap), hence the count.
    """
    conn = await connect(url)
    started = time.monotonic()
    try:
        while True:
            top = await conn.fetchval("SELECT coalesce(max(id), 0) FROM sim_runs")
            if top >= target and await conn.fetchval("SELECT count(*) FROM sim_runs") >= target:
                return time.monotonic() - started
            if time.monotonic() - started > limit_s:
                raise RuntimeError(f"timed out waiting for {target} runs")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def naive(
    admin_url: str, prefix: str, plan: Plan, settings: Settings, say: Callable[[str], None]
) -> dict[str, Any]:
    from store.runs import claim_due
    from workers.codec import connect_redis
    from workers.jobs import encode_claims
    from workers.naive import NAIVE_JOB

    url = await _fresh_db(admin_url, f"{prefix}_naive")
    await _population(url, plan.naive_users, settings=settings)
    queue = f"{prefix}:naive"
    redis = await connect_redis(settings.redis_url)
    try:
        await redis.delete(queue)
        conn = await connect(url)
        try:
            lease = await claim_due(conn, plan.naive_users, 3600)
            await _checkpoint(conn)
        finally:
            await conn.close()
        for claim in lease.claims:
            ids, slots = encode_claims([claim])
            await redis.enqueue_job(NAIVE_JOB, ids[0], slots[0], _queue_name=queue)
        say(f"naive: {plan.workers} workers, one job and one transaction per user-run")
        env = _simctl_env(url, settings, queue)
        workers = [_spawn(["worker", "--naive"], env) for _ in range(plan.workers)]
        try:
            seconds = await _wait_runs(url, plan.naive_users, 900)
        finally:
            _stop(workers)
    finally:
        await redis.aclose()
    await _drop_db(admin_url, f"{prefix}_naive")
    return {"users": plan.naive_users, "runs_per_s": round(plan.naive_users / seconds, 1)}


def _cpu_ticks(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def _pids(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _peak(
    url: str, users: int, done_before: int, procs: dict[str, list[int]]
) -> dict[str, Any]:
    """Every user due at one slot a few seconds ahead, after a vacuum (as the ceiling's
    population is) and a checkpoint (as before every timed phase); the clock starts at that
    slot and stops when every user has run."""
    conn = await connect(url)
    try:
        due_at = await conn.fetchval(
            "UPDATE users SET sim_next_run_at = date_trunc('second', now()) + interval '10 seconds' "
            "RETURNING sim_next_run_at"
        )
        await conn.execute("VACUUM ANALYZE users")
        await _checkpoint(conn)
        trades_before = await conn.fetchval("SELECT count(*) FROM trades")
        wait_s = await _seconds_until(conn, due_at)
        if wait_s < 0.1:
            raise RuntimeError(
                "the vacuum and checkpoint outlasted the head start; raise it for this population"
            )
        await asyncio.sleep(wait_s - 0.05)
        cpu_pids = {**procs, "redis": _pids("redis-server"), "postgres": _pids("postgres")}
        cpu0 = {k: _cpu_ticks(v) for k, v in cpu_pids.items()}
        pg_before = {pid: _cpu_ticks([pid]) for pid in cpu_pids["postgres"]}
        seconds = await _wait_runs(url, done_before + users, 1800)
        cpu1 = {k: _cpu_ticks(v) for k, v in cpu_pids.items()}
        # Postgres backends started during the phase (autovacuum, new connections) count whole.
        pg_now = _pids("postgres")
        cpu0["postgres"] = sum(pg_before.get(pid, 0.0) for pid in pg_now)
        cpu1["postgres"] = _cpu_ticks(pg_now)
        trades = await conn.fetchval("SELECT count(*) FROM trades") - trades_before
    finally:
        await conn.close()
    return {
        "seconds": round(seconds, 2),
        "runs_per_s": round(users / seconds, 1),
        "trades_per_s": round(trades / seconds, 1),
        "cpu_us_per_run": {k: round((cpu1[k] - cpu0[k]) / users * 1e6, 1) for k in cpu1},
    }


async def engine(
    admin_url: str, prefix: str, plan: Plan, settings: Settings, say: Callable[[str], None]
) -> dict[str, Any]:
    """Peak: every user due at once, until all ran, `plan.peaks` times (the best is reported,
    as the ceiling reports its best client count). Sustained: half the peak for a fixed time."""
    url = await _fresh_db(admin_url, f"{prefix}_engine")
    await _population(url, plan.engine_users, due=False, settings=settings)
    queue = f"{prefix}:engine"
    env = _simctl_env(url, settings, queue, SIM_SCHEDULER_INTERVAL_MS="100")
    conn = await connect(url)
    try:
        # Nobody is due while the processes start, so start-up costs stay out of the figures.
        await conn.execute("UPDATE users SET sim_next_run_at = now() + interval '1 day'")
    finally:
        await conn.close()
    workers = [_spawn(["worker"], env) for _ in range(plan.workers)]
    scheduler = _spawn(["scheduler"], env)
    try:
        procs = {"workers": [w.pid for w in workers], "scheduler": [scheduler.pid]}
        peaks = []
        for n in range(plan.peaks):
            say(
                f"simengine peak {n + 1}/{plan.peaks}: {plan.engine_users} users due, "
                f"1 scheduler + {plan.workers} workers"
            )
            if n == 0:
                rss_start = [_rss_kb(w.pid) for w in workers]
            peaks.append(await _peak(url, plan.engine_users, n * plan.engine_users, procs))
        best = max(peaks, key=lambda p: float(p["runs_per_s"]))
        peak = float(best["runs_per_s"])
        conn = await connect(url)
        try:
            # Sustained: spread the population so that it comes due at half the peak rate.
            interval_s = max(2, int(plan.engine_users / (peak / 2)))
            say(f"simengine sustained: {peak / 2:.0f} runs/s offered for {plan.sustained_s} s")
            # The maintenance autovacuum would do after a burst, done now so the sustained phase
            # measures the engine rather than a vacuum of 100,000 fresh dead rows.
            await conn.execute("VACUUM ANALYZE users, portfolio, sim_runs, trades, transactions")
            mark = await conn.fetchval("SELECT coalesce(max(id), 0) FROM sim_runs")
            # Slots spread from a start a few seconds ahead: slots of now() would already be
            # late by the time this 100,000-row update commits (measured: about 1 s, which was
            # then the p99 of the whole phase).
            start = await conn.fetchval("SELECT now() + interval '3 seconds'")
            await conn.execute(
                """UPDATE users SET sim_interval_s = $1::int, sim_claimed_until = NULL,
                       sim_next_run_at = $2::timestamptz + make_interval(secs => $1::int * random())""",
                interval_s,
                start,
            )
            ahead_s = await _seconds_until(conn, start)
            if ahead_s < 0:
                raise RuntimeError("the sustained phase's update outlasted its head start")
            await asyncio.sleep(ahead_s + plan.sustained_s)
            lags = [
                r["lag"]
                for r in await conn.fetch(
                    "SELECT extract(epoch FROM started_at - scheduled_for)::float8 AS lag "
                    "FROM sim_runs WHERE id > $1",
                    mark,
                )
            ]
        finally:
            await conn.close()
        rss_after_peak = [_rss_kb(w.pid) for w in workers]
    finally:
        _stop([scheduler, *workers])
    lags.sort()

    def pct(q: float) -> float | None:
        return round(lags[min(len(lags) - 1, int(q * len(lags)))], 3) if lags else None

    conn = await connect(url)
    try:
        found = await reconcile(conn)
    finally:
        await conn.close()
    result = {
        "users": plan.engine_users,
        "seconds": best["seconds"],
        "runs_per_s": best["runs_per_s"],
        "trades_per_s": best["trades_per_s"],
        "peaks_runs_per_s": [p["runs_per_s"] for p in peaks],
        "workers": plan.workers,
        "sustained": {
            "offered_runs_per_s": round(peak / 2, 1),
            "interval_s": interval_s,
            "runs": len(lags),
            "lag_p50_s": pct(0.5),
            "lag_p99_s": pct(0.99),
            "lag_max_s": round(lags[-1], 3) if lags else None,
        },
        "cpu_us_per_run": best["cpu_us_per_run"],
        "worker_rss_kb": {"start": rss_start, "after_peak": rss_after_peak},
        "reconcile": {"clean": not found, "discrepancies": len(found)},
    }
    await _drop_db(admin_url, f"{prefix}_engine")
    return result


async def claim_times(
    admin_url: str, prefix: str, plan: Plan, say: Callable[[str], None]
) -> dict[str, Any]:
    """Median time of one 200-user claim (rolled back) on populations of each size, all due."""
    from store.sqlfiles import query

    url = await _fresh_db(admin_url, f"{prefix}_claim")
    conn = await connect(url)
    out: dict[str, Any] = {}
    try:
        await migrate(conn)
        have = 0
        for size in plan.claim_sizes:
            say(f"claim time at {size} users")
            await seed_demo(conn, size - have, seed=size)
            have = size
            await conn.execute(
                "UPDATE users SET sim_next_run_at = now() - random() * interval '1 hour'"
            )
            await conn.execute("VACUUM ANALYZE users")
            times = []
            for _ in range(30):
                tr = conn.transaction()
                await tr.start()
                t0 = time.perf_counter()
                await conn.fetch(query("claim_due"), 200, 60.0, 200)
                times.append((time.perf_counter() - t0) * 1000)
                await tr.rollback()
            out[str(size)] = round(statistics.median(times), 3)
    finally:
        await conn.close()
    await _drop_db(admin_url, f"{prefix}_claim")
    return {"ms_per_claim_by_users": out}


async def worker_rss(
    admin_url: str, prefix: str, plan: Plan, settings: Settings, say: Callable[[str], None]
) -> dict[str, Any]:
    """One worker's RSS after its first 10,000 runs and after `rss_runs` runs."""
    url = await _fresh_db(admin_url, f"{prefix}_rss")
    users = min(plan.rss_runs, 200_000)
    await _population(url, users, settings=settings)
    queue = f"{prefix}:rss"
    env = _simctl_env(url, settings, queue, SIM_SCHEDULER_INTERVAL_MS="100", SIM_LEASE_S="600")
    worker = _spawn(["worker"], env)
    scheduler = _spawn(["scheduler"], env)
    say(f"worker RSS over {plan.rss_runs} runs")
    try:
        await _wait_runs(url, min(10_000, users), 1800)
        first = _rss_kb(worker.pid)
        done = users
        conn = await connect(url)
        try:
            while done < plan.rss_runs:
                await _wait_runs(url, done, 3600)
                await conn.execute(
                    "UPDATE users SET sim_next_run_at = now() - interval '1 hour', sim_claimed_until = NULL"
                )
                done += users
            await _wait_runs(url, plan.rss_runs, 3600)
        finally:
            await conn.close()
        last = _rss_kb(worker.pid)
    finally:
        _stop([scheduler, worker])
    await _drop_db(admin_url, f"{prefix}_rss")
    return {
        "after_10k_kb": first,
        f"after_{plan.rss_runs}_kb": last,
        "ratio": round(last / first, 3),
    }


async def _drop_queues(redis_url: str, prefix: str) -> None:
    """Remove this run's arq queues and the jobs still in them (the sustained phase ends with
    jobs queued), so bench runs leave nothing behind in REDIS_URL."""
    from arq.constants import job_key_prefix

    from workers.codec import connect_redis

    redis = await connect_redis(redis_url)
    try:
        async for queue in redis.scan_iter(match=f"{prefix}:*"):
            job_ids = await redis.zrange(queue, 0, -1)
            keys = [job_key_prefix + j.decode() for j in job_ids]
            for i in range(0, len(keys), 500):
                await redis.delete(*keys[i : i + 500])
            await redis.delete(queue)
    finally:
        await redis.aclose()


async def run_bench(settings: Settings, quick: bool, say: Callable[[str], None]) -> dict[str, Any]:
    plan = Plan.make(quick)
    prefix = f"simbench_{os.getpid()}"
    admin_url = settings.database_url
    started = time.monotonic()
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    conn = await connect(admin_url)
    try:
        result["machine"]["postgres"] = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    try:
        result["ceiling"] = await ceiling(admin_url, prefix, plan, say)
        result["tpcb"] = await tpcb(admin_url, prefix, plan, say)
        result["naive"] = await naive(admin_url, prefix, plan, settings, say)
        result["engine"] = await engine(admin_url, prefix, plan, settings, say)
        result["claim"] = await claim_times(admin_url, prefix, plan, say)
        result["rss"] = await worker_rss(admin_url, prefix, plan, settings, say)
    finally:
        # A phase that failed leaves its database behind: drop every one of this run's.
        conn = await connect(admin_url)
        try:
            names = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1 || '\\_%'", prefix
            )
        finally:
            await conn.close()
        for row in names:
            await _drop_db(admin_url, row["datname"])
        await _drop_queues(settings.redis_url, prefix)
    e = result["engine"]["runs_per_s"]
    best_ceiling = result["ceiling"]["best_runs_per_s"]
    claims = result["claim"]["ms_per_claim_by_users"]
    result["ratios"] = {
        "engine_vs_ceiling": round(e / best_ceiling, 3) if best_ceiling else None,
        "engine_vs_tpcb": round(e / result["tpcb"]["best_tps"], 3),
        "engine_vs_naive": round(e / result["naive"]["runs_per_s"], 2),
        "claim_largest_vs_10k": round(claims[str(plan.claim_sizes[-1])] / claims["10000"], 2),
    }
    result["settings"] = {
        "batch_size": settings.sim_batch_size,
        "workers": plan.workers,
        "worker_concurrency": settings.sim_worker_concurrency,
    }
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def markdown(result: dict[str, Any], command: str) -> str:
    r, e = result["ratios"], result["engine"]
    lines = [
        f"\n## {result['when']} ({'quick' if result['quick'] else 'full'})\n",
        f"Command: `{command}`. Machine: {result['machine']['cpus']} CPUs, {result['machine']['platform']}, "
        f"Python {result['machine']['python']}, PostgreSQL {result['machine']['postgres']}. "
        f"Settings: {json.dumps(result['settings'])}.\n",
        "| measure | value |",
        "|---|---|",
        f"| simengine peak user-runs/s | {e['runs_per_s']} ({e['users']} users, {e['workers']} workers;"
        f" best of {', '.join(str(p) for p in e['peaks_runs_per_s'])}) |",
        f"| simengine peak trades/s | {e['trades_per_s']} |",
        f"| ceiling.pgb best user-runs/s | {result['ceiling']['best_runs_per_s']} |",
        f"| ratio to ceiling | {r['engine_vs_ceiling']} |",
        f"| pgbench TPC-B best tps | {result['tpcb']['best_tps']} |",
        f"| ratio to TPC-B | {r['engine_vs_tpcb']} |",
        f"| naive design user-runs/s | {result['naive']['runs_per_s']} |",
        f"| ratio to naive | {r['engine_vs_naive']} |",
        f"| sustained lag p50 / p99 / max (s) | {e['sustained']['lag_p50_s']} / {e['sustained']['lag_p99_s']} / {e['sustained']['lag_max_s']} at {e['sustained']['offered_runs_per_s']} runs/s |",
        f"| claim ms by users | {json.dumps(result['claim']['ms_per_claim_by_users'])} |",
        f"| claim largest / 10k | {r['claim_largest_vs_10k']} |",
        f"| worker RSS (kB) | {json.dumps(result['rss'])} |",
        f"| CPU µs per run | {json.dumps(e['cpu_us_per_run'])} |",
        f"| reconcile after the run | {'clean' if e['reconcile']['clean'] else 'BROKEN: ' + str(e['reconcile']['discrepancies'])} |",
    ]
    return "\n".join(lines) + "\n"


async def run_steps(settings: Settings, users: int, say: Callable[[str], None]) -> dict[str, Any]:
    """`--steps`: a fresh database of `users` due users, run one batch at a time and profiled
    statement by statement (simctl/benchsteps.py), then dropped."""
    from simctl.benchsteps import profile_steps

    name = f"simbench_{os.getpid()}_steps"
    admin_url = settings.database_url
    try:
        url = await _fresh_db(admin_url, name)
        say(f"steps: {users} due users")
        await _population(url, users, settings=settings)
        conn = await connect(url)
        try:
            await _checkpoint(conn)
        finally:
            await conn.close()
        return await profile_steps(url, settings, say)
    finally:
        await _drop_db(admin_url, name)
