"""Naming and encoding jobs: the few things both the enqueuers (scheduler, `simctl run`) and the
workers need, kept apart from the job code so that `simctl run` imports little."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
    RedisError,
    ResponseError,
)

from engine.accounting import slot_to_us
from engine.errors import SimError
from simconfig import Settings, redact_url
from store.errors import Misconfigured, first_line
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


# What Redis answers to a connection it will never accept as configured: a wrong or missing
# password (WRONGPASS, NOAUTH), an ACL refusal, a database number it does not have.
_MISCONFIGURED = (AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError)
_MISCONFIGURED_REPLIES = ("DB index is out of range", "invalid DB index", "NOAUTH", "WRONGPASS")


def is_redis_misconfigured(exc: BaseException) -> bool:
    """Whether waiting cannot fix this Redis error: REDIS_URL (its password, user or database
    number) must change."""
    if isinstance(exc, _MISCONFIGURED):
        return True
    return isinstance(exc, ResponseError) and any(r in str(exc) for r in _MISCONFIGURED_REPLIES)


def redis_error(settings: Settings, exc: BaseException) -> RedisUnavailable | Misconfigured:
    """One line for a failed Redis call: Misconfigured (exit 2 at once, never retried) when
    REDIS_URL is wrong, RedisUnavailable when Redis does not answer."""
    url = redact_url(settings.redis_url)
    if is_redis_misconfigured(exc):
        return Misconfigured(
            f"configuration error: REDIS_URL: Redis at {url} refused it: {first_line(exc)}"
        )
    return RedisUnavailable(f"cannot reach Redis at {url}: {first_line(exc)}")


async def connect_redis(settings: Settings) -> ArqRedis:
    """arq's Redis pool for enqueueing, or RedisUnavailable after one failed attempt
    (Misconfigured when REDIS_URL is wrong: waiting cannot fix it)."""
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
