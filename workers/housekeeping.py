"""The scheduler's housekeeping beside its claims: sim_runs' day partitions made a week ahead
(store/partitions.py), and a checkpoint of the engine's history every SIM_CHECKPOINT_INTERVAL_S,
or sooner once SIM_CHECKPOINT_ROWS engine rows were written after the latest one's cut
(store/history.py), so reconcile's rows to sum stay bounded at any write rate. Any number of
schedulers may run it: making a partition that another scheduler made meanwhile finds it there
(the attach waits on the other's lock, then there is nothing to make); the history lease lets
one checkpoint at a time, and a checkpoint is due only when none started within the interval
and the rows are under the bound, so the schedulers take turns rather than repeat each other."""

from __future__ import annotations

import asyncio

from simconfig import Settings
from store import history, partitions
from store.db import connection, is_database_error
from store.errors import StoreError, first_line
from workers import metrics
from workers.deps import pause
from workers.logs import get_logger

log = get_logger("simengine.housekeeping")

# How often a scheduler looks whether a checkpoint is due (at most; the interval if shorter):
# three index probes and a one-row read.
_LOOK_EVERY_S = 5.0


async def checkpoint_if_due(settings: Settings) -> history.CheckpointReport | None:
    """Take a checkpoint when none started within the interval or the rows since the latest
    one's cut reached SIM_CHECKPOINT_ROWS; None when not due or another
    scheduler (or `simctl checkpoint` / `simctl prune`) holds the history lease."""
    async with connection(settings.history_database_url) as conn:
        if not await history.checkpoint_due(
            conn, settings.sim_checkpoint_interval_s, settings.sim_checkpoint_rows
        ):
            return None
        try:
            report = await history.checkpoint(
                conn,
                "scheduler",
                slippage_bps=settings.sim_slippage_bps,
                lease_s=settings.sim_history_lease_s,
            )
        except history.HistoryBusy:
            return None
    metrics.CHECKPOINTS.labels(report.state).inc()
    if report.state == "verified":
        log.info(
            "checkpoint.verified",
            checkpoint=report.id,
            rows=report.rows,
            seconds=round(report.seconds, 2),
            longest_tx_s=round(report.longest_tx_s, 2),
        )
    else:
        log.error("checkpoint.failed", checkpoint=report.id, problems=report.problems[:20])
    return report


async def partitions_ahead(settings: Settings) -> int:
    """sim_runs' day partitions through AHEAD_DAYS after today (and the default's bound
    validated if a prune left it NOT VALID); how many were made."""
    async with connection(settings.history_database_url) as conn:
        await partitions.validate_bound(conn)
        made = await partitions.add_ahead(conn)
    if made:
        log.info("partitions.made", count=made, ahead_days=partitions.AHEAD_DAYS)
    return made


async def _partitions_now(settings: Settings) -> None:
    """partitions_ahead; a failure is logged (at error level: a week of them stops the runs)
    and tried again at the next look."""
    try:
        await partitions_ahead(settings)
    except Exception as exc:  # nothing here may stop the scheduler's claims
        known = isinstance(exc, (StoreError, OSError)) or is_database_error(exc)
        log.error("partitions.not_made", error=first_line(exc), exc_info=None if known else exc)


async def housekeeping(settings: Settings, stopping: asyncio.Event) -> None:
    """Partitions ahead at once and at every look, checkpoints when due, until stopped; a
    failure is logged and tried again at the next look."""
    interval = settings.sim_checkpoint_interval_s
    look = _LOOK_EVERY_S if interval == 0 else min(_LOOK_EVERY_S, float(interval))
    await _partitions_now(settings)
    while not await pause(stopping, look):
        await _partitions_now(settings)
        if interval == 0:
            continue
        try:
            await checkpoint_if_due(settings)
        except (StoreError, OSError) as exc:
            log.warning("checkpoint.not_taken", error=first_line(exc))
        except Exception as exc:  # a bug here must not stop the scheduler's claims
            log.error("checkpoint.not_taken", error=first_line(exc), exc_info=exc)
