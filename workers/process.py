"""The worker process: arq Workers on one event loop, outliving Redis and Postgres outages.

The process owns what must outlive an outage: its health server (/livez, /readyz answer while it
lives), its Postgres pool (asyncpg reconnects it) and the signal handlers. arq's Worker stops when
its Redis connection drops; a new one is made after a capped backoff, and the jobs that were
running finish first (their slots are Postgres's business, not Redis's). At start it waits for
Postgres and Redis the same way. Only configuration stops it: exit 2 at start, one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

from arq.worker import Worker
from redis.asyncio import Redis
from redis.exceptions import RedisError

from engine.market import Market
from simconfig import Settings
from store.db import Pool
from store.errors import first_line
from store.market import load_market_retrying
from store.runs import deployment_id_retrying
from workers.deps import (
    Backoff,
    is_redis_misconfigured,
    open_pool,
    pause,
    readiness,
    redis_error,
    redis_settings,
    serve_health,
)
from workers.heartbeat import Heartbeat
from workers.jobs import worker_settings
from workers.logs import get_logger

log = get_logger("simengine.worker")

# The longest an idle worker waits between looks at the queue: the first job after a quiet
# spell waits at most this long, while an idle worker costs a few Redis calls a second instead
# of one every SIM_WORKER_POLL_MS.
IDLE_POLL_CAP_S = 0.2


class AdaptiveWorker(Worker):
    """arq's Worker polling every `poll_delay` (SIM_WORKER_POLL_MS) while it starts jobs or runs
    any, and after each poll that started none with none running, twice as long as the last,
    up to IDLE_POLL_CAP_S; a job started brings it back to `poll_delay` at once. Burst runs
    keep `poll_delay` (they end when the queue is empty)."""

    def __init__(self, *args: Any, idle_poll_cap_s: float = IDLE_POLL_CAP_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_poll_cap_s = max(idle_poll_cap_s, self.poll_delay_s)
        self.idle_delay_s = self.poll_delay_s
        self._started_any = False

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        before = len(self.tasks)
        await super().start_jobs(job_ids)
        # Ids of jobs other workers run are listed too (arq keeps them queued): only a job this
        # worker started counts.
        self._started_any = self._started_any or len(self.tasks) > before

    async def _poll_iteration(self) -> None:
        self._started_any = False
        await super()._poll_iteration()
        if self.burst or self._started_any or self.job_counter > 0:
            self.idle_delay_s = self.poll_delay_s
            return
        # arq's poll loop sleeps what is left of poll_delay after this iteration: wait the rest.
        extra_s = self.idle_delay_s - self.poll_delay_s
        self.idle_delay_s = min(self.idle_delay_s * 2, self.idle_poll_cap_s)
        if extra_s > 0:
            await asyncio.sleep(extra_s)


# arq Worker arguments from the settings, the process's pool and its market: the engine's
# (workers.jobs.worker_settings) unless a caller brings others (the bench's naive baseline).
JobsFactory = Callable[[Settings, Pool, Market], dict[str, Any]]


def run_worker(
    settings: Settings, *, burst: bool = False, jobs: JobsFactory = worker_settings
) -> None:
    """Run until SIGTERM/SIGINT (or an empty queue with burst). Raises Misconfigured or
    MetricsPortError for configuration; with burst, also Unavailable / RedisUnavailable."""
    asyncio.run(_serve(settings, burst=burst, jobs=jobs))


class _Process:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = asyncio.Event()
        self.pool: Pool | None = None
        self.worker: Worker | None = None
        self.graceful = True
        # A client of its own for /readyz: the arq Worker's comes and goes with Redis.
        self.probe: Redis = Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=2
        )

    def on_signal(self, sig: signal.Signals) -> None:
        self.stopping.set()
        if self.worker is not None:
            if self.graceful:  # stop picking jobs, let running ones finish (SIM_SHUTDOWN_S)
                self.worker.handle_sig_wait_for_completion(sig)
            else:
                self.worker.handle_sig(sig)

    async def ready(self) -> str | None:
        return await readiness(self.pool, self.probe)


async def _serve(settings: Settings, *, burst: bool, jobs: JobsFactory) -> None:
    proc = _Process(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, proc.on_signal, sig)
    health = None
    try:
        health = await serve_health(settings, proc.ready)
        # Every connection opened up front: no connect latency in the middle of a burst.
        proc.pool = await open_pool(
            settings, settings.sim_worker_concurrency + 1, proc.stopping, wait=not burst
        )
        if proc.pool is not None:
            # The stored market (MarketMismatch, exit 2, if a market setting here differs).
            market = await load_market_retrying(proc.pool, settings)
            # The queue of this database's deployment (SIM_QUEUE_NAME, or named after its id).
            proc.settings = settings.with_queue(await deployment_id_retrying(proc.pool))
            # This worker's row in sim_processes, beaten by a task of its own while the process
            # lives (Redis away included) and deleted on a clean stop.
            heartbeat = Heartbeat("worker", queue=proc.settings.sim_queue_name)
            beating = asyncio.create_task(heartbeat.run(proc.pool))
            try:
                await _work(proc, proc.pool, market, burst=burst, jobs=jobs)
            finally:
                await heartbeat.stop(beating, proc.pool)
        log.info("worker.stopped")
    finally:
        if proc.pool is not None:
            await proc.pool.close()
        await proc.probe.aclose()
        if health is not None:
            await health.close()


async def _work(
    proc: _Process, pool: Pool, market: Market, *, burst: bool, jobs: JobsFactory
) -> None:
    settings = proc.settings
    backoff = Backoff()
    starts = 0
    while not proc.stopping.is_set():
        kwargs = jobs(settings, pool, market)
        kwargs["redis_settings"] = redis_settings(settings)  # one line per failure, our retries
        inner_startup = kwargs["on_startup"]

        async def on_startup(ctx: dict[str, Any], inner: Any = inner_startup) -> None:
            nonlocal starts
            await inner(ctx)
            starts += 1
            backoff.reset()
            event = "worker.started" if starts == 1 else "worker.reconnected"
            log.info(event, concurrency=settings.sim_worker_concurrency)

        kwargs["on_startup"] = on_startup
        proc.graceful = bool(kwargs.get("job_completion_wait"))
        worker = AdaptiveWorker(**kwargs, burst=burst, handle_signals=False)
        proc.worker = worker
        try:
            await worker.async_run()
            return  # burst: the queue is empty
        except asyncio.CancelledError:
            if not proc.stopping.is_set():
                raise
            return
        except (RedisError, OSError, TimeoutError) as exc:
            if burst or is_redis_misconfigured(exc):
                raise redis_error(settings, exc) from None
            error = first_line(exc)
        finally:
            proc.worker = None
            await _retire(worker, settings.sim_shutdown_s)
        retry_in_s = backoff.next()
        log.warning("redis.unavailable", error=error, retry_in_s=retry_in_s)
        if await pause(proc.stopping, retry_in_s):
            return


async def _retire(worker: Worker, grace_s: float) -> None:
    """Let the jobs that were running finish (or cancel them after `grace_s`), then close what
    the arq Worker opened, quietly: Redis may be the reason it stopped."""
    running = [t for t in worker.tasks.values() if not t.done()]
    if running:
        _, late = await asyncio.wait(running, timeout=grace_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    with contextlib.suppress(Exception):
        await worker.close()
    redis: Any = getattr(worker, "_pool", None)
    if redis is not None:
        with contextlib.suppress(Exception):
            await redis.close(close_connection_pool=True)
