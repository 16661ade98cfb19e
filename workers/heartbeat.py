"""A process's heartbeat in sim_processes (store/processes.py): the scheduler beats from its
pass loop, workers and the console from a task of their own. A beat is one upsert by primary key
on a pooled connection, at most every BEAT_S, never inside a run's transaction; a failed beat is
logged and tried at the next one (it must never cost a claim or a run). A clean stop deletes the
row; a process that dies leaves it to show as gone, until a scheduler forgets it a day later."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial

from store import processes
from store.db import Pool, pooled
from store.errors import StoreError, first_line
from workers.logs import get_logger

log = get_logger("simengine.heartbeat")

_LEAVE_TIMEOUT_S = 2.0  # a stop never waits longer than this on the delete


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("simengine")
    except PackageNotFoundError:  # a source tree never installed
        return None


class Heartbeat:
    """This process's row: `beat` refreshes it (at most every `every_s` unless forced), `leave`
    deletes it."""

    def __init__(
        self,
        kind: processes.Kind,
        *,
        queue: str | None = None,
        every_s: float = processes.BEAT_S,
        forget: bool = False,
    ) -> None:
        self.proc = processes.Process(
            kind=kind,
            host=socket.gethostname()[:255] or "unknown",
            pid=os.getpid(),
            started_at=datetime.now(UTC),
            version=_version(),
            queue=queue,
        )
        self.every_s = every_s
        self.forget = forget  # the scheduler's: with each beat, delete rows unseen for a day
        self._beat_at = float("-inf")  # time.monotonic() of the last attempt
        self._failing = False

    def serving(self, queue: str) -> None:
        """Name the queue this process feeds or serves (known once the deployment is read)."""
        self.proc = replace(self.proc, queue=queue)

    async def beat(self, pool: Pool, *, force: bool = False) -> None:
        """Refresh the row when `every_s` has passed since the last attempt (or `force`)."""
        now = time.monotonic()
        if not force and now - self._beat_at < self.every_s:
            return
        self._beat_at = now
        try:
            await pooled(pool, partial(processes.beat, proc=self.proc))
            if self.forget:  # a walk of a few rows (the table holds one per process)
                forgotten = await pooled(pool, processes.forget)
                if forgotten:
                    log.info("processes.forgotten", rows=forgotten)
        except (StoreError, OSError) as exc:
            if not self._failing:  # once per streak: an outage is logged by the loops already
                log.warning("heartbeat.failed", error=first_line(exc))
            self._failing = True
            return
        self._failing = False

    async def run(self, pool: Pool) -> None:
        """Beat every `every_s` until cancelled (a task beside a worker's or console's work;
        `stop` ends it)."""
        while True:
            await self.beat(pool, force=True)
            await asyncio.sleep(self.every_s)

    async def stop(self, task: asyncio.Task[None], pool: Pool) -> None:
        """End the `run` task (cancelled: a beat retrying through an outage must not hold up
        the stop) and delete the row."""
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.leave(pool)

    async def leave(self, pool: Pool) -> None:
        """Delete the row (a clean stop); quietly gives up after a moment (the row then shows
        as gone, and is forgotten a day later)."""
        with contextlib.suppress(StoreError, OSError, TimeoutError):
            await asyncio.wait_for(
                pooled(pool, partial(processes.leave, proc=self.proc)), timeout=_LEAVE_TIMEOUT_S
            )
