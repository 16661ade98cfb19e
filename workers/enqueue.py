"""Naming and encoding jobs: the few things both the enqueuers (scheduler, `simctl run`) and the
workers need, kept apart from the job code so that `simctl run` imports little."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job
from redis.exceptions import RedisError

from engine.accounting import slot_to_us
from engine.errors import SimError
from simconfig import Settings, redact_url
from store.errors import first_line
from store.runs import Claim
from workers.codec import CODEC

JOB_NAME = "run_batch"


class RedisUnavailable(SimError):
    """Redis does not answer (the message is one line, without the URL's password)."""


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's Redis settings without its own connection retries (five log lines): the processes
    retry with one event per attempt, and a one-shot command fails at once with one line."""
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.conn_retries = 0
    return rs


def redis_error(settings: Settings, exc: BaseException) -> RedisUnavailable:
    return RedisUnavailable(
        f"cannot reach Redis at {redact_url(settings.redis_url)}: {first_line(exc)}"
    )


async def connect_redis(settings: Settings) -> ArqRedis:
    """arq's Redis pool for enqueueing, or RedisUnavailable after one failed attempt."""
    try:
        redis: ArqRedis = await create_pool(redis_settings(settings), **CODEC)  # JSON jobs
    except (RedisError, OSError, TimeoutError) as exc:
        raise redis_error(settings, exc) from None
    return redis


def encode_claims(claims: Sequence[Claim]) -> tuple[list[int], list[int]]:
    """A batch as two int lists (user ids, slots in Unix microseconds): small and exact."""
    ordered = sorted(claims, key=lambda c: c.user_id)
    return [c.user_id for c in ordered], [slot_to_us(c.slot) for c in ordered]


def job_id(user_ids: Sequence[int], slots_us: Sequence[int], lease_until: datetime | None) -> str:
    """Deterministic per lease: enqueueing the same claim twice is harmless, while a claim taken
    again after its lease expired gets a new job even if the old one is stuck in Redis."""
    key = f"{lease_until}|{list(user_ids)}|{list(slots_us)}"
    return "sim:" + hashlib.sha256(key.encode()).hexdigest()[:32]


async def enqueue_batch(
    redis: ArqRedis,
    queue_name: str,
    deployment: str,
    user_ids: Sequence[int],
    slots_us: Sequence[int],
    lease_id: int | None,
    lease_until: datetime | None,
) -> Job | None:
    """Enqueue one batch's job for the deployment whose database identity is `deployment`
    (store.runs.deployment_id; a worker of another database never runs it), named after its
    lease (job_id); None if that job is already queued."""
    return await redis.enqueue_job(
        JOB_NAME,
        list(user_ids),
        list(slots_us),
        lease_id,
        deployment=deployment,
        _job_id=job_id(user_ids, slots_us, lease_until),
        _queue_name=queue_name,
    )
