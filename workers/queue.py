"""What is really pending in arq's queue, and dropping what is not.

arq keeps a job in its queue (a sorted set scored by enqueue time) while a worker runs it, under
an in-progress key that lives for the job timeout + 10 s. A SIGKILLed worker's jobs therefore
stay listed for minutes although nobody runs them, and a job whose lease lapsed is obsolete: its
slots are claimed again with a new job. Counting the raw queue would show work where there is
none (`simctl status`) and hold back claiming (the scheduler's SIM_MAX_QUEUED_JOBS).
"""

from __future__ import annotations

import time
from typing import Any

from arq.constants import in_progress_key_prefix, job_key_prefix

_DROP_PER_PASS = 1000


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _untaken(redis: Any, job_ids: list[bytes]) -> list[str]:
    """The ids among `job_ids` that no worker has in progress."""
    if not job_ids:
        return []
    ids = [j.decode() if isinstance(j, bytes) else str(j) for j in job_ids]
    async with redis.pipeline(transaction=False) as pipe:
        for jid in ids:
            pipe.exists(in_progress_key_prefix + jid)
        taken = await pipe.execute()
    return [jid for jid, busy in zip(ids, taken, strict=True) if not busy]


async def pending_jobs(redis: Any, queue_name: str, lease_s: int) -> int:
    """Jobs waiting for a worker while their lease holds: enqueued within the last `lease_s`
    (a job's lease starts at its claim, just before it is enqueued) and taken by no worker."""
    fresh = await redis.zrangebyscore(queue_name, _now_ms() - lease_s * 1000, "+inf")
    return len(await _untaken(redis, fresh))


async def drop_lapsed_jobs(redis: Any, queue_name: str, lease_s: int) -> int:
    """Remove up to _DROP_PER_PASS jobs whose lease lapsed and that no worker has taken: their
    slots are claimed again with new jobs, so running them later could only be fenced off. Keeps
    the queue bounded while no worker runs. A worker racing us finds no job and moves on; the
    exactly-once fence is in Postgres either way."""
    stale = await redis.zrangebyscore(
        queue_name, "-inf", _now_ms() - lease_s * 1000, start=0, num=_DROP_PER_PASS
    )
    drop = await _untaken(redis, stale)
    if drop:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zrem(queue_name, *drop)
            pipe.delete(*(job_key_prefix + jid for jid in drop))
            await pipe.execute()
    return len(drop)
