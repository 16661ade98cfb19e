"""The scheduler: lease due users in Postgres, enqueue their slots on Redis, tick the market.

Exactly-once lives in Postgres (the lease, the worker's fence, the slot's uniqueness); Redis only
carries work. A job lost with Redis or a killed worker comes back when its lease expires.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from engine.market import Market
from simconfig import Settings
from store import runs as store
from store.db import Conn, Pool, pooled
from store.errors import StoreError, Unavailable, first_line
from store.market import load_market_retrying
from store.ticker import write_ticks
from workers import metrics
from workers.deps import (
    Backoff,
    RedisUnavailable,
    open_pool,
    open_redis,
    pause,
    readiness,
    serve_health,
)
from workers.enqueue import enqueue_batch
from workers.heartbeat import Heartbeat
from workers.housekeeping import housekeeping
from workers.logs import get_logger
from workers.queue import drop_lapsed_jobs, pending_jobs

T = TypeVar("T")
log = get_logger("simengine.scheduler")


def _count_retry(_: BaseException) -> None:
    metrics.RETRIES.inc()


_MAX_BATCHES_PER_CLAIM = 100
_LEASES_VACUUM_S = 1.0  # how often a scheduler that claimed something vacuums sim_leases


@dataclass
class PassReport:
    claimed: int = 0
    enqueued: int = 0
    queue_depth: int = 0
    claim_ms: float = 0.0


class Scheduler:
    """One scheduler process; any number may run at once."""

    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        redis: ArqRedis,
        market: Market,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.market = market  # the stored market (store.market.load_market)
        self._stopping = stopping or asyncio.Event()
        self._last_tick: int | None = None
        self._leases_vacuumed_at = 0.0  # time.monotonic() of the last VACUUM of sim_leases
        self._growth_sampled_at = float("-inf")  # time.monotonic() of the last sample
        self._claim_batches = 1  # the next claim's size in batches (see run_pass)
        self.deployment: str | None = None  # the database's identity, read by the first pass
        # This scheduler's row in sim_processes, refreshed after passes that went through (at
        # most every few seconds); the scheduler also forgets the rows of long-dead processes.
        self.heartbeat = Heartbeat("scheduler", forget=True)
        # time.monotonic() of the last claim attempt that got the claim lock or found the queue
        # full: claims that stall, whatever the cause, show in /readyz and the gauge.
        self._claim_ok_at = time.monotonic()
        metrics.CLAIM_AGE.set_function(lambda: time.monotonic() - self._claim_ok_at)

    async def _pg(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """`fn` on a pooled connection with store.db.pooled's retries: Unavailable once they give
        up on a lost server, the project's error for anything else."""
        return await pooled(self.pool, fn, on_retry=_count_retry)

    async def _redis(self, call: Awaitable[T]) -> T:
        """A Redis call; RedisUnavailable when Redis does not answer (told apart from Postgres:
        both raise OSError subclasses underneath)."""
        try:
            return await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"redis: {first_line(exc)}") from exc

    async def queue_depth(self) -> int:
        """Jobs really waiting: not taken by a (possibly dead) worker, lease not lapsed."""
        s = self.settings
        return await self._redis(pending_jobs(self.redis, self.queue_name, s.sim_lease_s))

    @property
    def queue_name(self) -> str:
        name = self.settings.sim_queue_name
        assert name is not None, "resolved by the first pass (Settings.with_queue)"
        return name

    def claim_stalled(self) -> str | None:
        """Why claims look stalled (no claim attempt got the lock or found the queue full for
        SIM_CLAIM_STALL_S), or None."""
        age_s = time.monotonic() - self._claim_ok_at
        if age_s > self.settings.sim_claim_stall_s:
            return f"claims stalled: no claim attempt went through for {age_s:.0f} s"
        return None

    async def run_pass(self) -> PassReport:
        """Lease and enqueue due users until none is left or the queue is deep enough."""
        report = PassReport()
        if self.deployment is None:
            self.deployment = await self._pg(store.deployment_id)
            self.settings = self.settings.with_queue(self.deployment)
        s = self.settings
        await self._pg(self._tick)
        await self._pg(lambda conn: store.materialize_null_slots(conn, 10_000))
        await self._redis(drop_lapsed_jobs(self.redis, self.queue_name, s.sim_lease_s))
        # Claims grow 1, 2, 4, ... batches within a pass: the first job of a burst is on the
        # queue a few milliseconds after its slot instead of after one claim of thousands. A
        # pass that looked starts the next one at twice what it claimed (see _next_claim), so
        # at a steady peak one claim a pass does, where every claim walks the due users still
        # leased; a pass that did not look (queue full, another scheduler claiming) changes
        # nothing, and one that raised keeps the size it started with.
        batches = self._claim_batches
        looked = False
        while not self._stopping.is_set():
            report.queue_depth = await self.queue_depth()
            metrics.QUEUE_DEPTH.set(report.queue_depth)
            room = s.sim_max_queued_jobs - report.queue_depth
            if room <= 0:
                self._claim_ok_at = time.monotonic()  # claims work; the workers are behind
                break  # backpressure: leases stay short-lived and the claim walk stays small
            limit = min(room, batches) * s.sim_batch_size
            batches = min(batches * 2, _MAX_BATCHES_PER_CLAIM)
            started = time.perf_counter()
            lease = await self._pg(
                partial(
                    store.claim_due,
                    limit=limit,
                    lease_s=s.sim_lease_s,
                    batch_size=s.sim_batch_size,
                )
            )
            elapsed = time.perf_counter() - started
            report.claim_ms += elapsed * 1000
            metrics.CLAIM_SECONDS.observe(elapsed)
            looked = looked or lease.locked
            if lease.locked:
                self._claim_ok_at = time.monotonic()
            claimed = len(lease.user_ids)
            metrics.CLAIMED.inc(claimed)
            if lease.recovered:
                metrics.LEASES_RECOVERED.inc(lease.recovered)
                log.info("lease.expired", recovered=lease.recovered)
            report.claimed += claimed
            for batch in lease.batches:
                job = await self._redis(
                    enqueue_batch(
                        self.redis,
                        self.queue_name,
                        self.deployment,
                        batch.user_ids,
                        batch.slots_us,
                        batch.lease_id,
                        batch.until,
                    )
                )
                if job is not None:
                    report.enqueued += 1
            if claimed < limit:
                break
        if looked:
            self._claim_batches = self._next_claim(report.claimed)
        if report.claimed and time.monotonic() - self._leases_vacuumed_at >= _LEASES_VACUUM_S:
            # Every batch leaves a dead ~3 kB lease row behind, and every claim reads the live
            # ones: without this, a claim read a growing table between autovacuums (20 ms per
            # claim after 40 s at 7,700 runs/s, 100 ms and a 12 s p99 lag after a few minutes).
            await self._pg(store.vacuum_leases)
            self._leases_vacuumed_at = time.monotonic()
        if time.monotonic() - self._growth_sampled_at >= s.sim_growth_sample_s:
            # Table sizes for `simctl status` and the gauges (catalogue reads, a few ms); a
            # failure here must not cost a pass its claims.
            self._growth_sampled_at = time.monotonic()
            try:
                await self._pg(
                    partial(metrics.record_growth, min_interval_s=s.sim_growth_sample_s / 2)
                )
            except StoreError as exc:
                log.warning("growth.not_sampled", error=first_line(exc))
        return report

    def _next_claim(self, claimed: int) -> int:
        """The first claim's size in batches for the pass after one that claimed `claimed`
        users: twice that (users still coming due at that pace take one claim), one batch after
        a pass that found nobody (the next burst ramps up from its first job)."""
        return min(_MAX_BATCHES_PER_CLAIM, max(1, 2 * -(-claimed // self.settings.sim_batch_size)))

    async def _tick(self, conn: Conn) -> None:
        now = datetime.now(UTC)
        tick = self.market.tick_of(now)
        metrics.TICK_AGE.set((now - self.market.tick_time(tick)).total_seconds())
        if tick == self._last_tick:
            return
        await write_ticks(conn, self.market)
        self._last_tick = tick

    async def loop(self, once: bool = False) -> None:
        """Passes until stopped (SIGTERM/SIGINT), or a single pass with once=True (which raises
        what stopped it, for a one-line exit)."""
        pause_s = self.settings.sim_scheduler_interval_ms / 1000
        # After a failed pass, wait longer each time (jittered, capped), then back to pause_s.
        backoff = Backoff(cap_s=max(pause_s, _MAX_FAILED_PAUSE_S))
        while True:
            failed = True
            try:
                report = await self.run_pass()
                failed = False
            except RedisUnavailable as exc:
                # Redis away (restart, network): leases already taken simply expire and are
                # claimed again; keep passing so the engine resumes as soon as Redis answers.
                if once:
                    raise
                log.warning("redis.unavailable", error=str(exc), retry_in_s=backoff.peek())
                report = PassReport()
            except Unavailable as exc:
                # Postgres restarted, failing over or our connections cut, after the retries
                # gave up: nothing was half-done (each claim is one statement); the pool
                # reconnects on the next acquire.
                if once:
                    raise
                log.warning("postgres.unavailable", error=str(exc), retry_in_s=backoff.peek())
                report = PassReport()
            except StoreError as exc:
                if once:
                    raise
                log.error("scheduler.pass_failed", error=str(exc), exc_info=exc)
                report = PassReport()
            except Exception as exc:  # a bug must not stop claiming: log it whole, pass again
                if once:
                    raise
                log.error("scheduler.pass_failed", error=first_line(exc), exc_info=exc)
                report = PassReport()
            if not failed and not once:
                if self.heartbeat.proc.queue is None:
                    self.heartbeat.serving(self.queue_name)
                await self.heartbeat.beat(self.pool)
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
            if failed:
                delay_s = backoff.next()
            else:
                backoff.reset()
                delay_s = pause_s
            if await pause(self._stopping, delay_s):
                return

    def stop(self) -> None:
        self._stopping.set()


_MAX_FAILED_PAUSE_S = 2.0


async def run_scheduler(settings: Settings, once: bool) -> None:
    """Serve health, wait for Postgres and Redis (unless once), run the loop, close all."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    deps = _Deps()
    health = await serve_health(settings, deps.ready)
    try:
        deps.pool = await open_pool(settings, 2, stopping, wait=not once)
        if deps.pool is None:
            return
        deps.redis = await open_redis(settings, stopping, wait=not once)
        if deps.redis is None:
            return
        market = await load_market_retrying(deps.pool, settings)
        scheduler = Scheduler(settings, deps.pool, deps.redis, market, stopping)
        deps.scheduler = scheduler
        log.info("scheduler.started", once=once)
        keeper = None if once else asyncio.create_task(housekeeping(settings, stopping))
        try:
            await scheduler.loop(once=once)
        finally:
            if keeper is not None:
                stopping.set()
                await keeper
            if not once:
                await scheduler.heartbeat.leave(deps.pool)
        log.info("scheduler.stopped")
    finally:
        if deps.redis is not None:
            await deps.redis.aclose()
        if deps.pool is not None:
            await deps.pool.close()
        if health is not None:
            await health.close()


@dataclass
class _Deps:
    pool: Pool | None = None
    redis: ArqRedis | None = None
    scheduler: Scheduler | None = None

    async def ready(self) -> str | None:
        """Postgres and Redis answer, and claims go through."""
        reason = await readiness(self.pool, self.redis)
        if reason is None and self.scheduler is not None:
            reason = self.scheduler.claim_stalled()
        return reason
