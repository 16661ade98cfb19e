"""Job payloads on Redis as JSON, never pickle.

arq pickles jobs by default, so anyone who can write to Redis could run code in every worker.
Our jobs are two lists of ints: JSON carries them exactly. A payload that does not decode is
logged here (`job.undecodable`) and arq drops it; its users come back when their lease expires.
"""

from __future__ import annotations

import json
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from workers.logs import get_logger

log = get_logger("simengine.worker")


def _default(value: object) -> str:
    # arq also serializes a failed job's exception into its (discarded: keep_result=0) result.
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    raise TypeError(f"{type(value).__name__} cannot be a job payload")


def dumps(value: Any) -> bytes:
    """A job (or arq's result record) as compact JSON."""
    return json.dumps(value, default=_default, separators=(",", ":")).encode()


def loads(data: bytes) -> Any:
    """JSON back into arq's job record; anything else is logged and refused (never unpickled)."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("job.undecodable", payload_bytes=len(data), error=type(exc).__name__)
        raise
    if not isinstance(value, dict):
        log.warning("job.undecodable", payload_bytes=len(data), error="not a JSON object")
        raise ValueError("a job payload is a JSON object")
    return value


# Keyword arguments for arq's Worker and create_pool: every producer and consumer uses both.
CODEC: dict[str, Any] = {"job_serializer": dumps, "job_deserializer": loads}


async def redis_from_url(redis_url: str) -> ArqRedis:
    """An arq Redis pool that enqueues JSON jobs (the only way this project enqueues), for a
    caller holding only a URL (the bench, tests); the processes use
    workers.enqueue.connect_redis(settings), which names the failure in one line."""
    pool: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url), **CODEC)
    return pool
