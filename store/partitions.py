"""sim_runs' day partitions (migration 0015): made ahead by the scheduler's housekeeping, dropped
by retention instead of deleting their rows.

A day partition goes when its day is over and every row in it is at or below retention's floor
for runs (the checkpoint that stands for them): the rows a batched DELETE would remove are then
exactly its rows but each user's latest run, which retention never removes; those few are put
back into the default partition (same ids, same values: the chain's lines do not change) in
the same transaction as the DROP. Archived first exactly as deleted rows are (store/archive.py:
the batch is `pending` in the manifest, the lines appended and fsynced, then the transaction
commits, then the batch is settled): a prune killed anywhere leaves either the partition whole
and the batch undone, or the partition gone, its keepers in the default and the batch settled by
the next prune from what the database holds. A partition holding a row above the floor (a late
slot of that day, run after the checkpoint) stays, and the batched deletes take its rows at or
below the floor. With an archive, a day's lines are streamed into the batch, a range of ids at a
time (ArchiveWriter.append: the pending record grows before each chunk is appended), so a day of
any size is dropped, not deleted, in bounded memory.

The DROP takes ACCESS EXCLUSIVE on sim_runs, so every statement on runs (the engine's inserts
too) waits while it waits and while it holds: the archive is written and the keepers found
before, the transaction holds the lock for one function call (sim_runs_drop_day: a probe, the
keepers read by id, the DROP, the keepers put back) under a short lock_timeout, tried again a
few times, and left to the next prune (its rows to the batched deletes meanwhile) when the lock
does not come.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Protocol

from store.archive import ArchiveWriter
from store.db import Conn, is_lock_timeout
from store.sqlfiles import query

# Days of partitions kept made ahead of today (UTC). Runs are applied only when due, so a run
# finds its day's partition as long as housekeeping ran within this many days.
AHEAD_DAYS = 7
# How long the drop waits for its ACCESS EXCLUSIVE lock on sim_runs (the engine waits behind it
# meanwhile), how many times it tries, and the pause between tries.
DROP_LOCK_TIMEOUT_MS = 500
DROP_ATTEMPTS = 5
DROP_RETRY_PAUSE_S = 0.5
# Lines read per statement, and appended to the archive per chunk, while archiving a partition.
ARCHIVE_CHUNK_IDS = 50_000
_DAY_PARTITION = re.compile(r"^sim_runs_p[0-9]{8}$")


def _q(name: str) -> str:
    return query(name, "partitions.sql")


class Renewable(Protocol):
    async def renew(self, force: bool = False) -> None: ...


@dataclass(slots=True)
class DropReport:
    """What drop_ended did: partitions dropped, rows gone with them, runs put back, and the
    longest time a drop's transaction held (or waited for) its lock on sim_runs."""

    dropped: list[str] = field(default_factory=list)
    rows: int = 0
    kept: int = 0
    skipped: list[str] = field(default_factory=list)
    longest_lock_ms: float = 0.0


async def add_ahead(conn: Conn, days: int = AHEAD_DAYS) -> int:
    """Day partitions made through `days` days after today; how many were made (0 most of the
    time: a catalogue read)."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT_MS * 4}ms'")
        made: int = await conn.fetchval(_q("add_partitions"), days)
    return made


async def validate_bound(conn: Conn) -> None:
    """The default's bound validated when a drop left it NOT VALID (it is enforced for new rows
    either way; valid, it lets the next partitions attach without a scan of the default)."""
    row = await conn.fetchrow(_q("horizon"))
    if row is None or row["bound_valid"] is not False:
        return
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT_MS * 4}ms'")
        await conn.execute(_q("validate_bound"))


def _ident(name: str) -> str:
    if not _DAY_PARTITION.match(name):
        raise ValueError(f"not a day partition of sim_runs: {name!r}")
    return f'"{name}"'


async def drop_ended(
    conn: Conn,
    floor: int,
    *,
    lease: Renewable,
    writer: ArchiveWriter | None,
    deadline: float,
) -> DropReport:
    """Drop every ended day partition whose rows are all at or below `floor` (the runs floor
    retention moved up first), archiving what goes into `writer`; stops at `deadline`
    (time.monotonic()). The caller holds the history lease."""
    report = DropReport()
    for part in await conn.fetch(_q("ended_partitions")):
        if time.monotonic() >= deadline:
            break
        name = part["name"]
        ident = _ident(name)
        await lease.renew()
        top = await conn.fetchval(f"SELECT max(id) FROM {ident}")  # noqa: S608 (checked name)
        if top is not None and top > floor:
            report.skipped.append(name)
            continue
        changes = int(await conn.fetchval(_q("changes_seen")))
        keep = [
            int(r["id"])
            for r in await conn.fetch(
                f"WITH last AS (SELECT DISTINCT ON (user_id) id, user_id, scheduled_for "  # noqa: S608
                f"FROM {ident} ORDER BY user_id, scheduled_for DESC) "
                "SELECT last.id FROM last WHERE NOT EXISTS (SELECT 1 FROM sim_runs l "
                "WHERE l.user_id = last.user_id AND l.scheduled_for > last.scheduled_for)"
            )
        ]
        going = await _going(conn, name, ident, top, set(keep), writer)
        put_back = await _drop(conn, name, top, changes, keep, report)
        if put_back is None:
            if writer is not None and writer.pending is not None:
                writer.settle(committed=False)
            report.skipped.append(name)
            continue
        if writer is not None and writer.pending is not None:
            writer.done()
        report.dropped.append(name)
        report.rows += going
        report.kept += put_back
    if report.dropped:
        try:
            await validate_bound(conn)
        except Exception as exc:
            if not is_lock_timeout(exc):
                raise
            # Housekeeping validates it before it attaches the next partition.
    return report


async def _going(
    conn: Conn, name: str, ident: str, top: int | None, keep: set[int], writer: ArchiveWriter | None
) -> int:
    """How many rows the drop removes; with an archive, their lines are written (pending) first."""
    if top is None:
        return 0
    if writer is None:
        total = int(await conn.fetchval(f"SELECT count(*) FROM {ident}"))  # noqa: S608
        return total - len(keep)
    low = int(await conn.fetchval(f"SELECT min(id) FROM {ident}")) - 1  # noqa: S608
    going = 0
    while low < top:
        high = min(low + ARCHIVE_CHUNK_IDS, top)
        lines = [
            (r["id"], r["line"])
            for r in await conn.fetch(_q("partition_rows"), low, high, name)
            if r["id"] not in keep
        ]
        if lines:
            writer.append("sim_runs", lines)
            going += len(lines)
        low = high
    return going


async def _drop(
    conn: Conn, name: str, top: int | None, changes: int, keep: list[int], report: DropReport
) -> int | None:
    """The drop's transaction, tried DROP_ATTEMPTS times on a lock timeout; the runs put back,
    or None when the partition changed since it was looked at or the lock did not come."""
    for attempt in range(DROP_ATTEMPTS):
        began = time.monotonic()
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT_MS}ms'")
                put_back: int | None = await conn.fetchval(
                    "SELECT sim_runs_drop_day($1, $2, $3, $4::bigint[])", name, top, changes, keep
                )
                if put_back is None:
                    raise _Changed
        except _Changed:
            return None
        except Exception as exc:
            if not is_lock_timeout(exc):
                raise
            if attempt + 1 < DROP_ATTEMPTS:
                await asyncio.sleep(DROP_RETRY_PAUSE_S)
            continue
        finally:
            report.longest_lock_ms = max(report.longest_lock_ms, (time.monotonic() - began) * 1000)
        return put_back
    return None


class _Changed(Exception):
    """The partition or the change log moved since the drop looked (rolled back)."""
