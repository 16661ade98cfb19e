"""The worker process: an arq Worker that outlives Redis restarts.

arq's Worker stops when its Redis connection drops. A worker that had started properly is made
again after a short backoff instead (its in-flight batches rolled back with the lost jobs, and
come back through their leases), so a Redis restart needs no operator. A failure before the
first start (a wrong URL, no server) still ends the process: that is configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from arq.worker import Worker
from redis.exceptions import RedisError

from simconfig import Settings
from store.errors import first_line
from workers.jobs import worker_settings
from workers.logs import get_logger
from workers.naive import naive_worker_settings

log = get_logger("simengine.worker")
_MAX_BACKOFF_S = 10.0


def run_worker(settings: Settings, *, burst: bool = False, naive: bool = False) -> None:
    """Run until SIGTERM/SIGINT (or an empty queue with burst); raise if it never started."""
    backoff_s = 0.5
    ever_started = False
    while True:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        kwargs = naive_worker_settings(settings) if naive else worker_settings(settings)
        worker = Worker(**kwargs, burst=burst)
        try:
            worker.run()
            return
        except (RedisError, OSError) as exc:
            ever_started = ever_started or "pool" in worker.ctx
            # arq skips on_shutdown when Redis is gone: close our pool and endpoints ourselves.
            with contextlib.suppress(Exception):
                loop.run_until_complete(kwargs["on_shutdown"](worker.ctx))
            if burst or not ever_started:
                raise
            log.warning("redis.unavailable", error=first_line(exc), retry_in_s=backoff_s)
        finally:
            with contextlib.suppress(Exception):
                loop.close()
        time.sleep(backoff_s)
        backoff_s = min(backoff_s * 2, _MAX_BACKOFF_S)
