"""A bench run: the shared shape's phases, then (with --pinned) the pinned shape's, each shape's
CPU and ratios, then the floors. Ratios are what to read; absolute figures move with the
machine, so every baseline is measured in the same run."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime

from simconfig import Settings
from simtools.bench import phases
from simtools.bench.databases import drop_leftovers
from simtools.bench.markdown import floors
from simtools.bench.pinned import pinned_shape
from simtools.bench.plan import BenchPlan
from simtools.bench.results import BenchResult, Cpu, Ratios, ShapeResult
from simtools.bench.shapes import Shape, shared_shape

Say = Callable[[str], None]


def _ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return None if a is None or not b else round(a / b, digits)


def _sum(values: list[float | None]) -> float | None:
    """A total only when every part was measured."""
    if any(v is None for v in values):
        return None
    return round(sum(v for v in values if v is not None), 1)


async def measure(
    shape: Shape, prefix: str, plan: BenchPlan, settings: Settings, say: Say, *, scaling: bool
) -> ShapeResult:
    """Every phase in `shape`; `scaling` adds claim time by population and worker RSS over many
    runs (properties of the engine, not of where it runs: measured in the shared shape only)."""
    ceiling = await phases.ceiling(shape, prefix, plan, say)
    tpcb = await phases.tpcb(shape, prefix, plan, say)
    naive = await phases.naive(shape, prefix, plan, settings, say)
    engine = await phases.engine(shape, prefix, plan, settings, say)
    claim = await phases.claim_times(shape, prefix, plan, say) if scaling else None
    rss = await phases.worker_rss(shape, prefix, plan, settings, say) if scaling else None
    by = engine.cpu_us_per_run
    python = _sum([by.get("workers"), by.get("scheduler"), by.get("redis")])
    base = ceiling.postgres_cpu_us_per_run
    claims = claim.ms_per_claim_by_users if claim else {}
    return ShapeResult(
        shape=shape.name,
        ceiling=ceiling,
        tpcb=tpcb,
        naive=naive,
        engine=engine,
        cpu=Cpu(
            ceiling_postgres_us_per_run=base,
            engine_postgres_us_per_run=by.get("postgres"),
            python_us_per_run=python,
            engine_postgres_vs_ceiling=_ratio(by.get("postgres"), base),
            python_vs_ceiling_postgres=_ratio(python, base),
        ),
        ratios=Ratios(
            engine_vs_ceiling=_ratio(engine.runs_per_s, ceiling.best_runs_per_s),
            engine_vs_tpcb=round(engine.runs_per_s / tpcb.best_tps, 3),
            engine_vs_naive=round(engine.runs_per_s / naive.runs_per_s, 2),
            claim_largest_vs_10k=_ratio(
                claims.get(str(plan.claim_sizes[-1])), claims.get("10000"), 2
            )
            if claim
            else None,
        ),
        claim=claim,
        rss=rss,
        cluster=shape.cluster,
    )


async def drop_queues(redis_url: str, prefix: str) -> None:
    """Remove this run's arq queues and the jobs still in them (the sustained phase ends with
    jobs queued), so a run leaves nothing behind in REDIS_URL."""
    from arq.constants import job_key_prefix

    from workers.codec import redis_from_url

    redis = await redis_from_url(redis_url)
    try:
        async for queue in redis.scan_iter(match=f"{prefix}:*"):
            job_ids = await redis.zrange(queue, 0, -1)
            keys = [job_key_prefix + j.decode() for j in job_ids]
            for i in range(0, len(keys), 500):
                await redis.delete(*keys[i : i + 500])
            await redis.delete(queue)
    finally:
        await redis.aclose()


async def run_bench(
    settings: Settings, *, quick: bool, pinned: bool, command: str, say: Say
) -> BenchResult:
    plan = BenchPlan.make(quick)
    prefix = f"simbench_{os.getpid()}"
    started = time.monotonic()
    when = datetime.now(UTC).isoformat(timespec="seconds")
    shared = await shared_shape(settings)
    try:
        shared_result = await measure(shared, prefix, plan, settings, say, scaling=True)
    finally:
        # A run killed mid-phase leaves its database; a failed one has dropped it already.
        await drop_leftovers(settings.database_url, prefix)
        await drop_queues(settings.redis_url, prefix)
    pinned_result = None
    if pinned:
        async with pinned_shape(settings, say) as shape:
            pinned_result = await measure(shape, prefix, plan, settings, say, scaling=False)
    result = BenchResult(
        when=when,
        quick=quick,
        command=command,
        machine={
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "postgres": shared.server_version,
        },
        settings={
            "batch_size": settings.sim_batch_size,
            "workers": plan.workers,
            "worker_concurrency": settings.sim_worker_concurrency,
        },
        shared=shared_result,
        pinned=pinned_result,
    )
    result.floors = floors(result)
    result.seconds = round(time.monotonic() - started, 1)
    return result
