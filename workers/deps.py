"""Reaching Postgres and Redis from the long-running processes.

A scheduler or worker waits out an outage of either (a restart, a failover, "the database system
is starting up", refused connections) with a capped, jittered backoff and one event per attempt:
`postgres.unavailable` or `redis.unavailable`. Only what waiting cannot fix stops it at start,
exit 2: a wrong password or user, an unknown database, a bad URL, a missing schema or privilege,
a busy SIM_METRICS_PORT, a Redis that refuses REDIS_URL's password or database number. One-shot runs (`--once`, `--burst`) do not wait: they fail at once with
one line, as a script expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis

from simconfig import Settings, redact_url
from store.db import Pool, create_pool, is_outage
from store.errors import Misconfigured, Unavailable, first_line
from store.preflight import check_engine_schema
from workers.enqueue import (
    RedisUnavailable,
    connect_redis,
    is_redis_misconfigured,
    redis_error,
    redis_settings,
)
from workers.logs import get_logger
from workers.metrics import HealthServer

__all__ = [
    "RedisUnavailable",
    "is_redis_misconfigured",
    "redis_error",
    "redis_settings",
]  # re-exported for the processes

log = get_logger("simengine.deps")

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0


@dataclass
class Backoff:
    """Doubling delays up to `cap_s`, with jitter so many processes do not retry in step."""

    cap_s: float = MAX_BACKOFF_S
    _next_s: float = field(default=FIRST_BACKOFF_S, repr=False)

    def peek(self) -> float:
        """The base of the next delay (for the log line that announces it)."""
        return min(self._next_s, self.cap_s)

    def next(self) -> float:
        delay_s = self.peek() * random.uniform(0.8, 1.2)
        self._next_s = min(self._next_s * 2, self.cap_s)
        return round(delay_s, 2)

    def reset(self) -> None:
        self._next_s = FIRST_BACKOFF_S


async def pause(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`, or less if asked to stop; True when stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
    return stopping.is_set()


async def open_pool(
    settings: Settings, size: int, stopping: asyncio.Event, *, wait: bool
) -> Pool | None:
    """A pool on a migrated database this role may run the engine on; waits for Postgres when
    `wait`. Misconfigured (exit 2) for what waiting cannot fix; None if stopped while waiting."""
    backoff = Backoff()
    while True:
        try:
            pool = await create_pool(
                settings.database_url,
                min_size=size,
                max_size=size,
                statement_cache_size=settings.sim_pg_statement_cache_size,
            )
            try:
                async with pool.acquire() as conn:
                    await check_engine_schema(conn)
            except BaseException:
                await pool.close()
                raise
            return pool
        except Misconfigured:
            raise
        except Exception as exc:
            # A restart that terminates the backends of a process still starting up is an
            # outage too (store.db.is_outage): wait and retry.
            if not is_outage(exc):
                raise
            if not wait:
                if isinstance(exc, Unavailable):
                    raise
                raise Unavailable(
                    f"cannot connect to {redact_url(settings.database_url)}: {first_line(exc)}"
                ) from None
            retry_in_s = backoff.next()
            log.warning("postgres.unavailable", error=first_line(exc), retry_in_s=retry_in_s)
            if await pause(stopping, retry_in_s):
                return None


async def open_redis(settings: Settings, stopping: asyncio.Event, *, wait: bool) -> ArqRedis | None:
    """arq's Redis pool once Redis answers (waiting when `wait`); None if stopped meanwhile."""
    backoff = Backoff()
    while True:
        try:
            return await connect_redis(settings)
        except RedisUnavailable as exc:
            if not wait:
                raise
            retry_in_s = backoff.next()
            log.warning("redis.unavailable", error=str(exc), retry_in_s=retry_in_s)
            if await pause(stopping, retry_in_s):
                return None


async def readiness(pool: Pool | None, redis: Any) -> str | None:
    """Why this process is not ready (Postgres or Redis does not answer), or None."""
    if pool is None:
        return "postgres: not connected yet"
    try:
        async with pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:  # any failure means "not ready"; the reason goes in the body
        return f"postgres: {first_line(exc)}"
    if redis is None:
        return "redis: not connected yet"
    try:
        await redis.ping()
    except Exception as exc:  # as above
        return f"redis: {first_line(exc)}"
    return None


async def serve_health(
    settings: Settings, check: Callable[[], Awaitable[str | None]]
) -> HealthServer | None:
    """This process's /metrics, /livez and /readyz, started before anything else so that they
    answer (503 with the reason) while dependencies are awaited; None when SIM_METRICS_PORT is
    0. A port that cannot be bound is configuration: MetricsPortError (exit 2)."""
    if not settings.sim_metrics_port:
        return None
    server = HealthServer(settings.sim_metrics_host, settings.sim_metrics_port, check)
    await server.start()
    return server
