"""The scheduler: lease due users in Postgres, enqueue their slots on Redis, tick the market.

Exactly-once lives in Postgres (the lease, the worker's fence, the slot's uniqueness); Redis only
carries work. A job lost with Redis or a killed worker comes back when its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import asyncpg
from arq import create_pool as create_redis
from arq.connections import ArqRedis, RedisSettings
from redis.exceptions import RedisError

from engine.market import Market
from simconfig import Settings
from store import runs as store
from store.db import create_pool, retrying
from store.errors import StoreError, first_line
from store.market import load_market_retrying
from store.ticker import write_ticks
from workers import metrics
from workers.jobs import JOB_NAME, job_id, start_health
from workers.logs import get_logger

log = get_logger("simengine.scheduler")


def _count_retry(_: BaseException) -> None:
    metrics.RETRIES.inc()


_MAX_BATCHES_PER_CLAIM = 100


@dataclass
class PassReport:
    claimed: int = 0
    enqueued: int = 0
    queue_depth: int = 0
    claim_ms: float = 0.0


class Scheduler:
    """One scheduler process; any number may run at once."""

    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, redis: ArqRedis, market: Market
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.market = market  # the stored market (store.market.load_market)
        self._stopping = asyncio.Event()
        self._last_tick: int | None = None

    async def queue_depth(self) -> int:
        depth: int = await self.redis.zcard(self.settings.sim_queue_name)
        return depth

    async def run_pass(self) -> PassReport:
        """Lease and enqueue due users until none is left or the queue is deep enough."""
        report = PassReport()
        s = self.settings
        await retrying(self._tick)
        async with self.pool.acquire() as conn:
            await retrying(lambda: store.materialize_null_slots(conn, 10_000))
        # Claims grow 1, 2, 4, ... batches within a pass: the first job of a burst is on the
        # queue a few milliseconds after its slot instead of after one claim of thousands.
        batches = 1
        while not self._stopping.is_set():
            report.queue_depth = await self.queue_depth()
            metrics.QUEUE_DEPTH.set(report.queue_depth)
            room = s.sim_max_queued_jobs - report.queue_depth
            if room <= 0:
                break  # backpressure: leases stay short-lived and the claim walk stays small
            limit = min(room, batches) * s.sim_batch_size
            batches = min(batches * 2, _MAX_BATCHES_PER_CLAIM)
            started = time.perf_counter()
            async with self.pool.acquire() as conn:
                lease = await retrying(
                    partial(store.claim_due, conn, limit, s.sim_lease_s), on_retry=_count_retry
                )
            elapsed = time.perf_counter() - started
            report.claim_ms += elapsed * 1000
            metrics.CLAIM_SECONDS.observe(elapsed)
            claimed = len(lease.user_ids)
            metrics.CLAIMED.inc(claimed)
            if lease.recovered:
                metrics.LEASES_RECOVERED.inc(lease.recovered)
                log.info("lease.expired", recovered=lease.recovered)
            report.claimed += claimed
            for i in range(0, claimed, s.sim_batch_size):
                user_ids = lease.user_ids[i : i + s.sim_batch_size]
                slots_us = lease.slots_us[i : i + s.sim_batch_size]
                job = await self.redis.enqueue_job(
                    JOB_NAME,
                    user_ids,
                    slots_us,
                    _job_id=job_id(user_ids, slots_us, lease.until),
                    _queue_name=s.sim_queue_name,
                )
                if job is not None:
                    report.enqueued += 1
            if claimed < limit:
                break
        return report

    async def _tick(self) -> None:
        now = datetime.now(UTC)
        tick = self.market.tick_of(now)
        metrics.TICK_AGE.set((now - self.market.tick_time(tick)).total_seconds())
        if tick == self._last_tick:
            return
        async with self.pool.acquire() as conn:
            await write_ticks(conn, self.market)
        self._last_tick = tick

    async def loop(self, once: bool = False) -> None:
        """Passes until stopped (SIGTERM/SIGINT), or a single pass with once=True."""
        pause_s = self.settings.sim_scheduler_interval_ms / 1000
        while True:
            try:
                report = await self.run_pass()
            except (RedisError, OSError) as exc:
                # Redis away (restart, network): leases already taken simply expire and are
                # claimed again; keep passing so the engine resumes as soon as Redis answers.
                log.warning("redis.unavailable", error=first_line(exc))
                report = PassReport()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, StoreError) as exc:
                # Postgres restarted or our connections were cut after the retries gave up:
                # nothing was half-done (each claim is one statement); the pool reconnects.
                log.warning("db.unavailable", error=first_line(exc))
                report = PassReport()
            if report.claimed:
                log.info(
                    "scheduler.pass",
                    claimed=report.claimed,
                    jobs=report.enqueued,
                    queue_depth=report.queue_depth,
                    claim_ms=round(report.claim_ms, 1),
                )
            if once or self._stopping.is_set():
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause_s)
            if self._stopping.is_set():
                return

    def stop(self) -> None:
        self._stopping.set()


async def run_scheduler(settings: Settings, once: bool) -> None:
    """Build the resources, run the loop, close what was opened."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        redis = await create_redis(RedisSettings.from_dsn(settings.redis_url))
        try:
            market = await load_market_retrying(pool, settings)
            scheduler = Scheduler(settings, pool, redis, market)
            health = (
                await start_health(settings, pool, redis) if settings.sim_metrics_port else None
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, scheduler.stop)
            log.info("scheduler.started", once=once)
            try:
                await scheduler.loop(once=once)
            finally:
                if health is not None:
                    await health.close()
            log.info("scheduler.stopped")
        finally:
            await redis.aclose()
    finally:
        await pool.close()
