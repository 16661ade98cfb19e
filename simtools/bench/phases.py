"""The phases of a bench run. Each takes the shape it runs in, makes and drops its own scratch
database, and returns a typed result; none knows which shape it is in. Every timed phase starts
after a CHECKPOINT, from a vacuumed population, as the ceiling does."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from simconfig import Settings
from simtools.bench import queries as sql
from simtools.bench.databases import scratch_database
from simtools.bench.plan import BenchPlan, ceiling_file
from simtools.bench.procs import BenchError, cpu_s, pgbench, pgbench_init, rss_kb
from simtools.bench.results import (
    Ceiling,
    CeilingRun,
    Claims,
    Engine,
    Naive,
    Peak,
    Reconcile,
    Rss,
    Sustained,
    Tpcb,
)
from simtools.bench.shapes import Shape
from simtools.harness.procs import Proc, module_argv, simctl_argv, stop
from store.db import connect
from store.ledger import reconcile
from store.migrate import migrate

Say = Callable[[str], None]
RUN_BATCH = 200  # user-runs per ceiling.pgb statement


def _us_per_run(seconds: float | None, runs: int) -> float | None:
    return None if seconds is None or runs <= 0 else round(seconds / runs * 1e6, 1)


def _simctl_env(
    url: str, shape: Shape, settings: Settings, queue: str, **extra: str
) -> dict[str, str]:
    """The environment of the scheduler and workers a phase starts: its database, the shape's
    Redis, a queue of the run's own, the market seed, and the batch size and concurrency the
    report states, no checkpoints; every other SIM_ setting left default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIM_")}
    env.update(
        DATABASE_URL=url,
        REDIS_URL=shape.redis_url,
        SIM_QUEUE_NAME=queue,
        SIM_BATCH_SIZE=str(settings.sim_batch_size),
        SIM_WORKER_CONCURRENCY=str(settings.sim_worker_concurrency),
        **({} if settings.sim_seed is None else {"SIM_SEED": str(settings.sim_seed)}),
        SIM_LOG_LEVEL="warning",
        SIM_LOG_JSON="true",
        # The floors time the run path alone; `bench --history` measures it with checkpoints.
        SIM_CHECKPOINT_INTERVAL_S="0",
        **extra,
    )
    return env


async def ceiling(shape: Shape, prefix: str, plan: BenchPlan, say: Say) -> Ceiling:
    """ceiling.pgb under pgbench at each client count, each from a fully due population with
    no runs yet; the Postgres CPU of each run is the cluster's over pgbench's run."""
    runs: dict[str, CeilingRun] = {}
    async with scratch_database(
        shape.admin_url, f"{prefix}_ceiling", users=plan.ceiling_users
    ) as url:
        for clients in plan.ceiling_clients:
            conn = await connect(url)
            try:
                await sql.restart_ceiling(conn)
            finally:
                await conn.close()
            per_client = max(1, plan.ceiling_users // (RUN_BATCH * clients) - 1)
            say(
                f"{shape.name}: ceiling: {clients} client(s) × {per_client} statements of "
                f"{RUN_BATCH} user-runs"
            )
            pg0 = shape.postgres_cpu_s()
            tps = await asyncio.to_thread(
                pgbench,
                clients,
                ["-n", "-t", str(per_client), "-f", str(ceiling_file())],
                url,
                shape.client_cpus,
            )
            pg1 = shape.postgres_cpu_s()
            conn = await connect(url)
            try:
                written = await sql.run_count(conn)
            finally:
                await conn.close()
            runs[str(clients)] = CeilingRun(
                clients=clients,
                tps=round(tps, 2),
                runs_per_s=round(tps * RUN_BATCH, 1),
                runs_written=written,
                valid=written == clients * per_client * RUN_BATCH,
                postgres_cpu_us_per_run=_us_per_run(
                    None if pg0 is None or pg1 is None else pg1 - pg0, written
                ),
            )
    valid = [r for r in runs.values() if r.valid]
    best = max(valid, key=lambda r: r.runs_per_s) if valid else None
    return Ceiling(
        by_clients=runs,
        best_runs_per_s=best.runs_per_s if best else None,
        postgres_cpu_us_per_run=best.postgres_cpu_us_per_run if best else None,
    )


async def tpcb(shape: Shape, prefix: str, plan: BenchPlan, say: Say) -> Tpcb:
    """pgbench's TPC-B at each client count for a fixed time: context, not a floor."""
    results: dict[str, float] = {}
    async with scratch_database(shape.admin_url, f"{prefix}_tpcb") as url:
        say(f"{shape.name}: TPC-B: pgbench -i -s {plan.tpcb_scale}")
        await asyncio.to_thread(pgbench_init, plan.tpcb_scale, url, shape.client_cpus)
        for clients in plan.tpcb_clients:
            conn = await connect(url)
            try:
                await sql.checkpoint(conn)
            finally:
                await conn.close()
            say(f"{shape.name}: TPC-B: {clients} client(s), {plan.tpcb_seconds} s")
            tps = await asyncio.to_thread(
                pgbench, clients, ["-T", str(plan.tpcb_seconds)], url, shape.client_cpus
            )
            results[str(clients)] = round(tps, 1)
    return Tpcb(tps_by_clients=results, best_tps=max(results.values()))


async def wait_runs(url: str, target: int, limit_s: float) -> float:
    """Seconds until sim_runs holds `target` rows, polled every 50 ms: first by the ids the
    sequence handed out (its own page: free for the measured server; skipped when it cannot
    tell), then by the highest committed id (a primary-key probe), counted only once that
    reaches the target: ids are an upper bound of the count (a rolled-back batch leaves a
    gap)."""
    conn = await connect(url)
    started = time.monotonic()
    try:
        while True:
            taken = await sql.run_ids_taken(conn)
            if (
                (taken is None or taken >= target)
                and await sql.top_run_id(conn) >= target
                and await sql.run_count(conn) >= target
            ):
                return time.monotonic() - started
            if time.monotonic() - started > limit_s:
                raise BenchError(f"timed out waiting for {target} runs")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def naive(shape: Shape, prefix: str, plan: BenchPlan, settings: Settings, say: Say) -> Naive:
    """The naive design: every user leased, one arq job each, workers applying one run per
    transaction row by row, timed until every run is written."""
    from simtools.bench.naive import NAIVE_JOB, NAIVE_MODULE
    from store.runs import claim_due
    from workers.codec import redis_from_url
    from workers.jobs import encode_claims

    queue = f"{prefix}:naive"
    async with scratch_database(
        shape.admin_url, f"{prefix}_naive", users=plan.naive_users, settings=settings
    ) as url:
        redis = await redis_from_url(shape.redis_url)
        try:
            await redis.delete(queue)
            conn = await connect(url)
            try:
                lease = await claim_due(conn, plan.naive_users, 3600)
                await sql.checkpoint(conn)
            finally:
                await conn.close()
            for claim in lease.claims:
                ids, slots = encode_claims([claim])
                await redis.enqueue_job(NAIVE_JOB, ids[0], slots[0], _queue_name=queue)
        finally:
            await redis.aclose()
        say(
            f"{shape.name}: naive: {plan.workers} workers, one job and one transaction per user-run"
        )
        env = _simctl_env(url, shape, settings, queue)
        workers = [
            Proc(module_argv(NAIVE_MODULE), env, cpus=shape.client_cpus)
            for _ in range(plan.workers)
        ]
        try:
            seconds = await wait_runs(url, plan.naive_users, 900)
        finally:
            stop(workers)
    return Naive(users=plan.naive_users, runs_per_s=round(plan.naive_users / seconds, 1))


async def _peak(
    shape: Shape, url: str, users: int, done_before: int, procs: dict[str, list[int]]
) -> Peak:
    """Every user due at one slot a few seconds ahead, after a vacuum (as the ceiling's
    population is) and a checkpoint; the clock starts at that slot and stops when every user
    has run. CPU by side over exactly that time: our processes from /proc, Postgres as the
    whole cluster's (backends gone meanwhile included)."""
    conn = await connect(url)
    try:
        due_at = await sql.due_at_once(conn, 10)
        await sql.checkpoint(conn)
        trades_before = await sql.trade_count(conn)
        wait_s = await sql.seconds_until(conn, due_at)
        if wait_s < 0.1:
            raise BenchError(
                "the vacuum and checkpoint outlasted the head start; raise it for this population"
            )
        await asyncio.sleep(wait_s - 0.05)
        cpu0 = {k: cpu_s(v) for k, v in procs.items()}
        pg0 = shape.postgres_cpu_s()
        seconds = await wait_runs(url, done_before + users, 1800)
        cpu1 = {k: cpu_s(v) for k, v in procs.items()}
        pg1 = shape.postgres_cpu_s()
        trades = await sql.trade_count(conn) - trades_before
    finally:
        await conn.close()
    # A side with no process here (Redis on another machine) is not measured: None, not zero.
    cpu: dict[str, float | None] = {
        k: _us_per_run(cpu1[k] - cpu0[k], users) if pids else None for k, pids in procs.items()
    }
    cpu["postgres"] = _us_per_run(None if pg0 is None or pg1 is None else pg1 - pg0, users)
    return Peak(
        seconds=round(seconds, 2),
        runs_per_s=round(users / seconds, 1),
        trades_per_s=round(trades / seconds, 1),
        cpu_us_per_run=cpu,
    )


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 3)


async def engine(
    shape: Shape, prefix: str, plan: BenchPlan, settings: Settings, say: Say
) -> Engine:
    """simengine as deployed (one scheduler, `plan.workers` workers, real processes). Peak:
    every user due at once, until all ran, `plan.peaks` times (the best reported). Sustained:
    the population spread to come due at half the best peak's rate for `plan.sustained_s`; lag
    is each run's batch start minus its slot. Then the ledger is reconciled."""
    queue = f"{prefix}:engine"
    async with scratch_database(
        shape.admin_url, f"{prefix}_engine", users=plan.engine_users, due=False, settings=settings
    ) as url:
        conn = await connect(url)
        try:
            # Nobody is due while the processes start, so start-up costs stay out of the figures.
            await sql.park(conn)
        finally:
            await conn.close()
        env = _simctl_env(url, shape, settings, queue, SIM_SCHEDULER_INTERVAL_MS="100")
        workers = [
            Proc(simctl_argv("worker"), env, cpus=shape.client_cpus) for _ in range(plan.workers)
        ]
        scheduler = Proc(simctl_argv("scheduler"), env, cpus=shape.client_cpus)
        try:
            procs = {
                "workers": [w.pid for w in workers],
                "scheduler": [scheduler.pid],
                "redis": [] if shape.redis_pid is None else [shape.redis_pid],
            }
            peaks: list[Peak] = []
            rss_start: list[int] = []
            for n in range(plan.peaks):
                say(
                    f"{shape.name}: simengine peak {n + 1}/{plan.peaks}: {plan.engine_users} "
                    f"users due, 1 scheduler + {plan.workers} workers"
                )
                if n == 0:
                    rss_start = [rss_kb(w.pid) for w in workers]
                peaks.append(
                    await _peak(shape, url, plan.engine_users, n * plan.engine_users, procs)
                )
            best = max(peaks, key=lambda p: p.runs_per_s)
            sustained = await _sustained(shape, url, plan, best.runs_per_s, say)
            rss_after = [rss_kb(w.pid) for w in workers]
        finally:
            stop([scheduler, *workers])
        conn = await connect(url)
        try:
            found = await reconcile(conn)
        finally:
            await conn.close()
    return Engine(
        users=plan.engine_users,
        workers=plan.workers,
        seconds=best.seconds,
        runs_per_s=best.runs_per_s,
        trades_per_s=best.trades_per_s,
        peaks_runs_per_s=[p.runs_per_s for p in peaks],
        cpu_us_per_run=best.cpu_us_per_run,
        sustained=sustained,
        worker_rss_kb={"start": rss_start, "after_peak": rss_after},
        reconcile=Reconcile(clean=not found, discrepancies=len(found)),
    )


async def _sustained(shape: Shape, url: str, plan: BenchPlan, peak: float, say: Say) -> Sustained:
    conn = await connect(url)
    try:
        interval_s = max(2, int(plan.engine_users / (peak / 2)))
        say(
            f"{shape.name}: simengine sustained: {peak / 2:.0f} runs/s offered for {plan.sustained_s} s"
        )
        mark = await sql.top_run_id(conn)
        # Slots spread from a start a few seconds ahead: slots from now() would already be late
        # by the time the update of the whole population commits (measured: about 1 s, as much
        # as the whole phase's p99 would be). spread() vacuums the peaks' dead rows first.
        start = await sql.spread(conn, interval_s, 3.0)
        ahead_s = await sql.seconds_until(conn, start)
        if ahead_s < 0:
            raise BenchError("the sustained phase's update outlasted its head start")
        await asyncio.sleep(ahead_s + plan.sustained_s)
        lags = await sql.lags_after(conn, mark)
    finally:
        await conn.close()
    return Sustained(
        offered_runs_per_s=round(peak / 2, 1),
        interval_s=interval_s,
        runs=len(lags),
        lag_p50_s=_percentile(lags, 0.5),
        lag_p99_s=_percentile(lags, 0.99),
        lag_max_s=round(lags[-1], 3) if lags else None,
    )


async def claim_times(shape: Shape, prefix: str, plan: BenchPlan, say: Say) -> Claims:
    """Median time of one 200-user claim (rolled back) on populations of each size, all due."""
    out: dict[str, float] = {}
    async with scratch_database(shape.admin_url, f"{prefix}_claim") as url:
        conn = await connect(url)
        try:
            await migrate(conn)
            for size in plan.claim_sizes:
                say(f"{shape.name}: claim time at {size} users")
                out[str(size)] = round(await sql.claim_ms(conn, size, batch=200, samples=30), 3)
        finally:
            await conn.close()
    return Claims(ms_per_claim_by_users=out)


async def worker_rss(
    shape: Shape, prefix: str, plan: BenchPlan, settings: Settings, say: Say
) -> Rss:
    """One worker's RSS after its first 10,000 runs and after `plan.rss_runs` runs (the
    population made due again as often as needed)."""
    users = min(plan.rss_runs, 200_000)
    queue = f"{prefix}:rss"
    async with scratch_database(
        shape.admin_url, f"{prefix}_rss", users=users, settings=settings
    ) as url:
        env = _simctl_env(
            url, shape, settings, queue, SIM_SCHEDULER_INTERVAL_MS="100", SIM_LEASE_S="600"
        )
        worker = Proc(simctl_argv("worker"), env, cpus=shape.client_cpus)
        scheduler = Proc(simctl_argv("scheduler"), env, cpus=shape.client_cpus)
        say(f"{shape.name}: worker RSS over {plan.rss_runs} runs")
        try:
            await wait_runs(url, min(10_000, users), 1800)
            first = rss_kb(worker.pid)
            done = users
            conn = await connect(url)
            try:
                while done < plan.rss_runs:
                    await wait_runs(url, done, 3600)
                    await sql.all_due(conn)
                    done += users
                await wait_runs(url, plan.rss_runs, 3600)
            finally:
                await conn.close()
            last = rss_kb(worker.pid)
        finally:
            stop([scheduler, worker])
    return Rss(
        runs=plan.rss_runs, after_10k_kb=first, after_all_kb=last, ratio=round(last / first, 3)
    )
