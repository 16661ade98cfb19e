"""arq job functions and worker settings. Jobs are thin: decode, hand to BatchRunner, report."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from arq.connections import RedisSettings

from engine.accounting import slot_from_us, slot_to_us
from simconfig import Settings
from store.db import create_pool
from store.market import load_market_retrying
from store.runs import Claim
from workers import metrics
from workers.batch import BatchRunner
from workers.logs import configure_logging, get_logger

log = get_logger("simengine.worker")
JOB_NAME = "run_batch"


def encode_claims(claims: Sequence[Claim]) -> tuple[list[int], list[int]]:
    """A batch as two int lists (user ids, slots in Unix microseconds): small and exact."""
    ordered = sorted(claims, key=lambda c: c.user_id)
    return [c.user_id for c in ordered], [slot_to_us(c.slot) for c in ordered]


def decode_claims(user_ids: Sequence[int], slots_us: Sequence[int]) -> list[Claim]:
    slots: dict[int, datetime] = {}  # a batch's users mostly share a few slots
    for us in slots_us:
        if us not in slots:
            slots[us] = slot_from_us(us)
    return [Claim(uid, slots[us]) for uid, us in zip(user_ids, slots_us, strict=True)]


def job_id(user_ids: Sequence[int], slots_us: Sequence[int], lease_until: datetime | None) -> str:
    """Deterministic per lease: enqueueing the same claim twice is harmless, while a claim taken
    again after its lease expired gets a new job even if the old one is stuck in Redis."""
    key = f"{lease_until}|{list(user_ids)}|{list(slots_us)}"
    return "sim:" + hashlib.sha256(key.encode()).hexdigest()[:32]


async def run_batch(
    ctx: dict[str, Any], user_ids: list[int], slots_us: list[int]
) -> dict[str, int]:
    """The arq job: apply one batch of claimed slots."""
    runner: BatchRunner = ctx["runner"]
    started = time.perf_counter()
    outcome = await runner.run(decode_claims(user_ids, slots_us))
    metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
    metrics.BATCH_SIZE.observe(len(user_ids))
    metrics.RUNS.labels("applied").inc(len(outcome.applied))
    metrics.RUNS.labels("skipped").inc(len(outcome.skipped))
    metrics.RUNS.labels("failed").inc(len(outcome.failed))
    metrics.AUTO_PAUSES.inc(outcome.auto_paused)
    metrics.FEES_USD.inc(float(outcome.fees_usd))  # monitoring only; the ledger keeps Decimals
    for (asset, side), count in outcome.by_asset_side.items():
        metrics.TRADES.labels(asset, side).inc(count)
    for lag in outcome.lags_s:
        metrics.LAG_SECONDS.observe(lag)
    log.debug(
        "batch.committed",
        applied=len(outcome.applied),
        skipped=len(outcome.skipped),
        failed=len(outcome.failed),
        trades=outcome.trades,
    )
    return {
        "applied": len(outcome.applied),
        "skipped": len(outcome.skipped),
        "failed": len(outcome.failed),
        "trades": outcome.trades,
    }


def worker_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for arq's Worker, built from our Settings."""

    async def on_startup(ctx: dict[str, Any]) -> None:
        configure_logging(settings)
        # Every connection opened up front: no connect latency in the middle of a burst.
        size = settings.sim_worker_concurrency + 1
        pool = await create_pool(settings.database_url, min_size=size, max_size=size)
        ctx["pool"] = pool
        market = await load_market_retrying(pool, settings)
        ctx["runner"] = BatchRunner(
            pool,
            settings,
            market,
            on_retry=lambda _: metrics.RETRIES.inc(),
        )
        if settings.sim_metrics_port:
            ctx["health"] = await start_health(settings, pool, ctx["redis"])
        log.info("worker.started", concurrency=settings.sim_worker_concurrency)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        health = ctx.pop("health", None)
        if health is not None:
            await health.close()
        pool = ctx.pop("pool", None)
        if pool is not None:
            await pool.close()
        log.info("worker.stopped")

    return {
        "functions": [run_batch],
        "queue_name": settings.sim_queue_name,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "max_jobs": settings.sim_worker_concurrency,
        "job_timeout": settings.sim_job_timeout_s,
        "keep_result": 0,
        "max_tries": 1000,
        "poll_delay": settings.sim_worker_poll_ms / 1000,
        "job_completion_wait": settings.sim_shutdown_s,
        "log_results": False,
    }


async def start_health(settings: Settings, pool: Any, redis: Any) -> metrics.HealthServer:
    """Serve /metrics, /healthz (Postgres, Redis, loop) and /readyz for this process."""

    async def check() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        await redis.ping()

    server = metrics.HealthServer(settings.sim_metrics_host, settings.sim_metrics_port, check)
    await server.start()
    server.ready = True
    return server
