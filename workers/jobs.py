"""arq job functions and worker settings. Jobs are thin: decode, hand to BatchRunner, report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog
from arq.connections import RedisSettings
from arq.worker import Retry

from engine.accounting import slot_from_us
from engine.market import Market
from simconfig import Settings
from store.db import Pool
from store.runs import Claim, deployment_id_retrying
from workers import metrics
from workers.batch import BatchRunner
from workers.codec import CODEC
from workers.enqueue import JOB_NAME, encode_claims, job_id
from workers.logs import get_logger

log = get_logger("simengine.worker")
__all__ = ["JOB_NAME", "decode_claims", "encode_claims", "job_id", "run_batch", "worker_settings"]


def decode_claims(user_ids: Sequence[int], slots_us: Sequence[int]) -> list[Claim]:
    slots: dict[int, datetime] = {}  # a batch's users mostly share a few slots
    for us in slots_us:
        if us not in slots:
            slots[us] = slot_from_us(us)
    return [Claim(uid, slots[us]) for uid, us in zip(user_ids, slots_us, strict=True)]


def _foreign(ctx: dict[str, Any], deployment: str | None) -> dict[str, int]:
    """A job of another database (or of none): never run here. Logged at warning and counted
    once per job on this worker. A job naming a deployment goes back on the queue after a short
    defer, so a worker of that deployment (sharing this Redis and queue name) runs it; one
    naming none belongs to nobody and is dropped (its slots, if any, come back through their
    lease)."""
    jid = str(ctx.get("job_id"))
    seen: dict[str, None] = ctx["foreign_seen"]
    if jid not in seen:
        if len(seen) >= _FOREIGN_SEEN_MAX:
            del seen[next(iter(seen))]
        seen[jid] = None
        metrics.FOREIGN_JOBS.inc()
        log.warning(
            "job.foreign",
            job_id=jid,
            job_deployment=deployment,
            deployment=ctx["deployment"],
            action="dropped" if deployment is None else "put back",
        )
    if deployment is None:
        return {"foreign": 1}
    raise Retry(defer=FOREIGN_DEFER_S)


FOREIGN_DEFER_S = 0.5
_FOREIGN_SEEN_MAX = 10_000


async def run_batch(
    ctx: dict[str, Any],
    user_ids: list[int],
    slots_us: list[int],
    lease_id: int | None = None,
    deployment: str | None = None,
) -> dict[str, int]:
    """The arq job: apply one batch of claimed slots and give back its lease (a job without
    one, from `simctl run`, leaves leases to end by themselves). `deployment` is the identity
    of the database the job was enqueued for: another database's job is never run here."""
    runner: BatchRunner = ctx["runner"]
    ours = ctx.get("deployment")
    if ours is None:  # read by the first job, not at start: arq starts while Postgres is away
        ctx["deployment"] = ours = await deployment_id_retrying(runner.pool)
    if deployment != ours:
        return _foreign(ctx, deployment)
    started = time.perf_counter()
    # Every event of this job (split, failures, retries) names it; the task's context only.
    structlog.contextvars.bind_contextvars(job_id=ctx.get("job_id"), batch_size=len(user_ids))
    outcome = await runner.run(decode_claims(user_ids, slots_us), lease_id)
    metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
    metrics.BATCH_SIZE.observe(len(user_ids))
    metrics.RUNS.labels("applied").inc(len(outcome.applied))
    metrics.RUNS.labels("skipped").inc(len(outcome.skipped))
    metrics.RUNS.labels("failed").inc(len(outcome.failed))
    metrics.RUNS_REFUSED.inc(len(outcome.refused))
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
        "refused": len(outcome.refused),
        "trades": outcome.trades,
    }


def worker_settings(settings: Settings, pool: Pool, market: Market) -> dict[str, Any]:
    """Keyword arguments for arq's Worker, built from our Settings. The Postgres pool is the
    process's (workers/process.py): it outlives the arq Worker, which is made again after Redis
    comes back."""

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["foreign_seen"] = {}  # job ids already reported by _foreign, oldest first
        ctx["runner"] = BatchRunner(
            pool,
            settings,
            market,
            on_retry=lambda _: metrics.RETRIES.inc(),
        )

    return {
        "functions": [run_batch],
        "queue_name": settings.sim_queue_name,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "on_startup": on_startup,
        "max_jobs": settings.sim_worker_concurrency,
        "job_timeout": settings.sim_job_timeout_s,
        "keep_result": 0,
        "max_tries": 1000,
        "poll_delay": settings.sim_worker_poll_ms / 1000,
        "job_completion_wait": settings.sim_shutdown_s,
        "log_results": False,
        **CODEC,  # JSON, never pickle
    }
