"""Jobs on Redis are JSON, never pickle: whoever can write to Redis cannot run code in a worker.
A payload that does not decode is logged and dropped; its users come back through their lease."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
from arq.constants import job_key_prefix
from redis.asyncio import Redis

from engine.market import Market
from simconfig import Settings
from simtools.bench.naive import naive_worker_settings
from store.ledger import reconcile
from tests.support.procs import no_partial_runs, run_counts, seed_due, simctl, wait_until
from workers.jobs import worker_settings

pytestmark = pytest.mark.timeout(180)


class _TouchOnUnpickle:
    """What an attacker would put in a pickled job: unpickling it creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


def pickled_job(marker: Path) -> bytes:
    """A job record shaped the way arq's default (pickle) serializer stores one."""
    record = {"t": 1, "f": "run_batch", "a": [_TouchOnUnpickle(marker), []], "k": {}, "et": 0}
    return pickle.dumps(record)


def test_every_worker_refuses_a_pickled_job(settings: Settings, tmp_path: Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickled_job(control))  # the payload is live: unpickled, it runs
    assert control.exists()
    marker = tmp_path / "marker"
    no_pool = cast(asyncpg.Pool, None)  # the settings only close over the pool
    market = Market(settings.market_params())
    for make in (worker_settings, naive_worker_settings):
        kwargs = make(settings, no_pool, market)
        with pytest.raises(ValueError):
            kwargs["job_deserializer"](pickled_job(marker))
    assert not marker.exists()


async def lease_expired(pg: asyncpg.Connection) -> bool:
    return bool(await pg.fetchval("SELECT bool_and(until < now()) FROM sim_leases"))


async def test_a_pickled_or_garbage_job_is_dropped_unrun_and_its_users_run_once_after_the_lease(
    pg: asyncpg.Connection, env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    await seed_due(pg, 4)
    env = {**env, "SIM_BATCH_SIZE": "2", "SIM_LEASE_S": "2"}
    queue = env["SIM_QUEUE_NAME"]
    redis = Redis.from_url(redis_url)
    try:
        assert simctl(["scheduler", "--once"], env).returncode == 0
        job_ids = [j.decode() for j in await redis.zrange(queue, 0, -1)]
        assert len(job_ids) == 2
        keys = [job_key_prefix + j for j in job_ids]
        stored = await redis.get(keys[0])
        assert stored is not None and json.loads(stored)["f"] == "run_batch"  # JSON on the wire

        # Someone with access to Redis swaps the payloads: a pickle that runs code, and garbage.
        marker = tmp_path / "pwned"
        assert await redis.set(keys[0], pickled_job(marker), keepttl=True)
        assert await redis.set(keys[1], b"\x80\x04not a job\xff", keepttl=True)

        worker = simctl(["worker", "--burst"], env)
        assert worker.returncode == 0, worker.stderr[-2000:]
        assert not marker.exists()  # never unpickled
        events = [json.loads(line) for line in worker.stderr.splitlines() if line.startswith("{")]
        assert [e["event"] for e in events].count("job.undecodable") == 2
        assert await redis.zcard(queue) == 0  # dropped, not retried forever
        assert await redis.exists(*keys) == 0
        assert await run_counts(pg) == (0, 0)

        # Their users are still leased; once the lease expires the scheduler claims them again.
        await wait_until(lambda: lease_expired(pg), 30, "the lease to expire")
        assert simctl(["scheduler", "--once"], env).returncode == 0
        worker = simctl(["worker", "--burst"], env)
        assert worker.returncode == 0, worker.stderr[-2000:]
    finally:
        await redis.aclose()
    assert await run_counts(pg) == (4, 4)  # each user's slot ran exactly once
    await no_partial_runs(pg)
    assert await reconcile(pg) == []
