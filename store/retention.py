"""Retention (`simctl prune`): delete the engine's history that a verified checkpoint stands for,
in small batches beside a busy engine, optionally archiving it first (store/archive.py).

The order that keeps every view exact whenever the process dies:
1. One transaction moves sim_history's floors up to P's cuts (P = the newest verified checkpoint
   at least `keep_days` old) and points pruned_through at P. From then on sim_ledger_totals and
   sim_pnl read P's per-user totals for every engine row at or below the floors and ignore those
   rows, so deleting them, all or some, changes nothing a view shows.
2. Batches delete those rows by primary-key range, each in its own transaction with the change
   log's floors set locally (the trigger does not record retention's own deletes), the history
   lease renewed, and a bound on the whole run. Each batch is sized to a time budget and
   followed by a pause that keeps the pruner to its duty cycle (`Pacer`). With an archive, a
   batch's rows are read and written to the archive before its delete's transaction opens;
   the delete takes exactly those ids and proves, by count and digest of the rows it removed,
   that they are the lines archived (or rolls back).
3. The per-user totals no checkpoint will stand on again are deleted, and the prune is audited.
Only one history job (a prune or a checkpoint) runs at a time: the lease in sim_history, taken
without waiting. A prune killed at any point leaves floors and totals consistent; the next prune
deletes what is left (and settles the archive's last batch).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.chain import TABLES, chain_hash, table_hash, window_hash
from store import partitions
from store.archive import (
    ArchiveError,
    ArchiveWriter,
    block_hashes,
    check_files,
    line_id,
    load_checkpoint,
    load_manifest,
)
from store.db import Conn, is_lock_timeout
from store.errors import Refused
from store.history import (
    CUT,
    FLOOR,
    HASH,
    LEASE_S,
    ORIGIN,
    ROWS,
    Cut,
    Lease,
    Timer,
    leased,
    since_table,
    user_ranges,
    verify_window,
)
from store.runs import audit, deployment_id
from store.sqlfiles import query

MAX_KEEP_DAYS = 36_500
# How long one batch waits for a row lock (a row of the engine's history is never locked by the
# engine; something else holding one is waited out this long, then the prune stops, nothing of
# that batch done).
BATCH_LOCK_TIMEOUT = "5s"
# The fewest rows a batch is sized down to (SIM_PRUNE_BATCH, when smaller, wins): below this a
# batch's round trips, not its rows, are its cost. Each prune starts here and grows.
MIN_BATCH_ROWS = 10
# How far one batch's duration moves the next one's size: grow at most 2x (a quick batch may be
# luck), shrink up to 4x (a slow one is a server telling us something).
_GROW, _SHRINK = 2.0, 0.25


def _q(name: str) -> str:
    return query(name, "retention.sql")


def _h(name: str) -> str:
    return query(name, "history.sql")


@dataclass(frozen=True, slots=True)
class Limits:
    """How a prune paces itself (SIM_PRUNE_*)."""

    batch: int = 5000  # the most rows in a batch
    pause_ms: int = 50  # the least pause between batches
    max_s: int = 3600
    lease_s: int = LEASE_S  # SIM_HISTORY_LEASE_S
    batch_ms: int = 250  # a batch's transaction's time budget
    duty: float = 0.1  # the share of wall time batches may take (1: pause_ms only)


class Pacer:
    """Sizes each batch to the time budget and spaces batches to the duty cycle.

    Size: the next batch's rows are the last one's times budget / held (the seconds its delete
    transaction was open), moved at most 2x up or 4x down, within [min(10, batch), batch]: the
    rows' width and the server's load change what a row costs, the budget stays. Pause: after a
    batch whose work (reading and archiving its rows, the delete, settling the manifest) took
    w seconds, max(pause_ms, w x (1 - duty) / duty): the pruner works at most `duty` of the wall
    time, whatever a batch costs. Each pause is at most a third of the lease, which the next
    batch renews."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.floor = min(MIN_BATCH_ROWS, limits.batch)
        self.rows = self.floor

    def held(self, held_s: float) -> None:
        """The last batch's delete transaction was open `held_s` seconds: size the next."""
        budget = self.limits.batch_ms / 1000
        factor = budget / held_s if held_s > 0 else _GROW
        factor = min(_GROW, max(_SHRINK, factor))
        self.rows = max(self.floor, min(self.limits.batch, int(self.rows * factor)))

    def pause_s(self, worked_s: float) -> float:
        duty = self.limits.duty
        wanted = max(self.limits.pause_ms / 1000, worked_s * (1 - duty) / duty)
        return min(wanted, self.limits.lease_s / 3)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    id: int
    cut_at: datetime
    cuts: dict[str, int]


@dataclass(frozen=True, slots=True)
class TableGoing:
    table: str
    rows: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Plan:
    """What a prune with `keep_days` would do now, and why it would be refused."""

    keep_days: int
    now: datetime
    cutoff: datetime
    checkpoint: Checkpoint | None  # P
    pruned_through: int | None  # before this prune
    floors: dict[str, int]  # what the floors will be (never lower than they are)
    start: dict[str, int]  # the walk starts after these ids
    tables: list[TableGoing]
    refusals: list[str]
    lease_holder: str | None
    lease_until: datetime | None

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {
            "keep_days": self.keep_days,
            "cutoff": self.cutoff,
            "checkpoint": None
            if cp is None
            else {"id": cp.id, "cut_at": cp.cut_at, "cuts": cp.cuts},
            "pruned_through": self.pruned_through,
            "floors": self.floors,
            "rows": {t.table: t.rows for t in self.tables},
            "bytes_estimate": {t.table: t.bytes for t in self.tables},
            "bytes_estimate_total": self.bytes,
            "refused": self.refusals,
            "lease": None
            if self.lease_holder is None
            else {"holder": self.lease_holder, "until": self.lease_until},
        }


@dataclass(slots=True)
class PruneReport:
    plan: Plan
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    batches: int = 0
    complete: bool = False
    checkpoint_users_removed: int = 0
    archive_sha256: str | None = None
    seconds: float = 0.0
    # The delete batches: the longest one's transaction, its rows (fewest, most), the time they
    # worked (reading, archiving, deleting) and the time paused between them.
    longest_batch_s: float = 0.0
    batch_rows_min: int = 0
    batch_rows_max: int = 0
    working_s: float = 0.0
    paused_s: float = 0.0
    # Every transaction of the prune (the verification before the deletes included).
    timer: Timer = field(default_factory=Timer)

    def batch(self, rows: int, held_s: float) -> None:
        self.batches += 1
        self.longest_batch_s = max(self.longest_batch_s, held_s)
        self.batch_rows_min = rows if self.batches == 1 else min(self.batch_rows_min, rows)
        self.batch_rows_max = max(self.batch_rows_max, rows)

    drops: partitions.DropReport = field(default_factory=partitions.DropReport)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkpoint_id": self.plan.checkpoint.id if self.plan.checkpoint else None,
            "partitions_dropped": self.drops.dropped,
            "runs_put_back": self.drops.kept,
            "longest_drop_tx_ms": round(self.drops.longest_lock_ms, 1),
            "pruned_through": self.plan.pruned_through,
            "keep_days": self.plan.keep_days,
            "floors": self.plan.floors,
            "rows": self.rows,
            "batches": self.batches,
            "batch_rows": {"min": self.batch_rows_min, "max": self.batch_rows_max},
            "longest_batch_s": round(self.longest_batch_s, 3),
            "longest_transaction_s": round(self.timer.longest_s, 3),
            "transactions": self.timer.transactions,
            "working_s": round(self.working_s, 3),
            "paused_s": round(self.paused_s, 3),
            "complete": self.complete,
            "checkpoint_users_removed": self.checkpoint_users_removed,
            "archive_sha256": self.archive_sha256,
            "seconds": round(self.seconds, 3),
        }


# -- the plan -------------------------------------------------------------------------------------
async def plan(conn: Conn, keep_days: int, *, count: bool = True) -> Plan:
    """What would go with a window of `keep_days` days, the checkpoint P that stands for it, an
    estimate of the bytes it frees, and every reason it would be refused (empty: allowed).
    count=False leaves the rows and bytes at 0 (a prune does not scan twice)."""
    if not 0 <= keep_days <= MAX_KEEP_DAYS:
        raise Refused(f"--keep-days must be between 0 and {MAX_KEEP_DAYS}, not {keep_days}")
    times = await conn.fetchrow(_q("prune_cutoff"), keep_days)
    state = await conn.fetchrow(_q("prune_state"))
    assert times is not None and state is not None
    cutoff: datetime = times["cutoff"]
    refusals: list[str] = []
    pruned_through: int | None = state["pruned_through"]
    current = {t: int(state[FLOOR[t]]) for t in TABLES}

    row = await conn.fetchrow(_q("prune_checkpoint"), keep_days)
    checkpoint = None
    if row is None:
        newest = await conn.fetchrow(_q("prune_newest_verified"))
        if newest is None:
            refusals.append(
                "no verified checkpoint covers the window: there is none yet (take one with "
                "`simctl checkpoint`)"
            )
        else:
            refusals.append(
                f"no verified checkpoint covers the window: the oldest it could be cut at is "
                f"{cutoff.isoformat()} ({keep_days} days ago) and the verified ones are newer "
                f"(newest: {newest['id']}, cut at {newest['cut_at'].isoformat()})"
            )
    else:
        checkpoint = Checkpoint(row["id"], row["cut_at"], {t: int(row[CUT[t]]) for t in TABLES})

    withdrawal = await conn.fetchrow(_q("prune_oldest_open_withdrawal"))
    if withdrawal is not None and withdrawal["created_at"] < cutoff:
        refusals.append(
            f"the window is shorter than the platform needs: withdrawal {withdrawal['id']} "
            f"(user {withdrawal['user_id']}) has been {withdrawal['status']} since "
            f"{withdrawal['created_at'].isoformat()}, before the window's start "
            f"{cutoff.isoformat()}; finish or fail it, or keep more days"
        )
    # `simctl report` has no configured look-back (its --since is per call and it reads only
    # what is there), so no report rule applies here.

    floors = dict(current)
    if checkpoint is not None and (pruned_through is None or checkpoint.id > pruned_through):
        floors = {t: max(current[t], checkpoint.cuts[t]) for t in TABLES}
    elif checkpoint is not None and checkpoint.id != pruned_through:
        # Already pruned through a newer checkpoint (a shorter window before): that one stands,
        # and what is left below its floors goes.
        newer = await conn.fetchrow(_q("prune_checkpoint_by_id"), pruned_through)
        assert newer is not None
        checkpoint = Checkpoint(
            newer["id"], newer["cut_at"], {t: int(newer[CUT[t]]) for t in TABLES}
        )
    start = {t: int(await conn.fetchval(_q(f"prune_start_{t}"))) for t in TABLES}
    tables = []
    for t in TABLES:
        rows = 0
        if count and floors[t] > start[t]:
            rows = int(await conn.fetchval(_q(f"prune_count_{t}"), start[t], floors[t]))
        tables.append(TableGoing(t, rows, await _bytes_for(conn, t, rows)))
    live = bool(state["lease_live"])
    return Plan(
        keep_days=keep_days,
        now=times["now"],
        cutoff=cutoff,
        checkpoint=checkpoint,
        pruned_through=pruned_through,
        floors=floors,
        start=start,
        tables=tables,
        refusals=refusals,
        lease_holder=state["lease_holder"] if live else None,
        lease_until=state["lease_until"] if live else None,
    )


async def _bytes_for(conn: Conn, table: str, rows: int) -> int:
    """An estimate: the table's size with its indexes per row, times the rows."""
    if rows == 0:
        return 0
    size = await conn.fetchrow(_q("prune_table_size"), table)
    assert size is not None
    tuples = int(size["tuples"])
    if tuples <= 0:  # never analysed: count them
        tuples = int(await conn.fetchval(_q(f"prune_all_{table}")))
    return int(size["bytes"]) * rows // max(tuples, 1)


# -- the prune ------------------------------------------------------------------------------------
async def prune(
    conn: Conn,
    keep_days: int,
    *,
    actor: str,
    limits: Limits = Limits(),
    archive_dir: Path | None = None,
) -> PruneReport:
    """Prune to a window of `keep_days` days (see the module's doc); Refused naming why when no
    verified checkpoint covers it, the platform needs more, or the rows it would delete do not
    verify against their checkpoints; HistoryBusy (naming the holder and until when) when
    another prune or checkpoint runs. Stops cleanly at `limits.max_s` (report.complete False:
    the next prune goes on). `conn` must be a session connection (a temporary table is kept
    across its transactions)."""
    started = time.monotonic()
    async with leased(conn, "prune", limits.lease_s) as lease:
        the_plan = await plan(conn, keep_days, count=False)
        if the_plan.refusals:
            raise Refused("prune refused: " + "; ".join(the_plan.refusals))
        report = PruneReport(the_plan)
        writer = None
        if archive_dir is not None:
            writer = await _open_archive(conn, archive_dir)
        assert the_plan.checkpoint is not None
        timer = report.timer
        if the_plan.pruned_through is None or the_plan.checkpoint.id > the_plan.pruned_through:
            await _stand_on(conn, lease, the_plan, timer)
        await _move_floors(conn, the_plan, actor, lease, timer)
        if writer is not None:
            await _record_checkpoints(conn, writer)
        # sim_runs' ended days whose rows are all below the floor go whole (store/partitions.py);
        # the batches below delete what is left at or below the floors, the default's included.
        dropped = await partitions.drop_ended(
            conn,
            the_plan.floors["sim_runs"],
            lease=lease,
            writer=writer,
            deadline=started + limits.max_s,
        )
        report.rows["sim_runs"] += dropped.rows
        report.drops = dropped
        report.complete = True
        pacer = Pacer(limits)
        for t in TABLES:
            done = await _delete_table(conn, t, the_plan, report, pacer, lease, writer, started)
            if not done:
                report.complete = False
                break
        if report.complete:
            # The checkpoints' own rule (the newest two verified and the one pruned through).
            async with timer.tx(conn):
                status = await conn.execute(_h("checkpoint_forget_users"))
            report.checkpoint_users_removed = int(status.split()[-1])
        if writer is not None:
            report.archive_sha256 = writer.digest()
        report.seconds = time.monotonic() - started
        async with timer.tx(conn):
            await lease.renew(force=True)
            await audit(conn, actor, "prune", None, _audit_details(report))
        return report


async def _stand_on(conn: Conn, lease: Lease, p: Plan, timer: Timer) -> None:
    """Before anything is deleted: every window from the checkpoint pruned through (or the
    beginning) up to P verified against its stored hashes and chain (a changed or deleted row
    refuses the prune: deleting it would destroy the evidence), summing the rows on the way
    into P's per-user totals. Those are compared with P's own when the checkpoints still keep
    them, and stored as P's when they do not (checkpoints keep only the newest two)."""
    assert p.checkpoint is not None
    await since_table(conn)
    walked, prev_hash = ORIGIN, None
    if p.pruned_through is not None:
        base = await conn.fetchrow(_h("checkpoint_by_id"), p.pruned_through)
        assert base is not None
        walked, prev_hash = Cut.of_checkpoint(base), base["chain_hash"]
        for lo, hi in await user_ranges(conn, None):
            async with timer.tx(conn):
                await conn.execute(_h("since_from_checkpoint"), p.pruned_through, lo, hi)
    problems: list[str] = []
    for cp in await conn.fetch(_h("verified_checkpoints")):
        if p.pruned_through is not None and cp["id"] <= p.pruned_through:
            continue
        if cp["id"] > p.checkpoint.id:
            break
        problems += await verify_window(conn, timer, lease, cp, walked, sum_into=True)
        if chain_hash(prev_hash, cp["window_hash"]) != cp["chain_hash"]:
            problems.append(f"checkpoint {cp['id']}: its chain hash does not follow")
        walked, prev_hash = Cut.of_checkpoint(cp), cp["chain_hash"]
    if problems:
        raise Refused(
            "prune refused, nothing deleted: the rows it would delete do not verify against "
            "their checkpoints: " + "; ".join(problems[:5])
        )
    if await conn.fetchval(_h("checkpoint_users_count"), p.checkpoint.id):
        for lo, hi in await user_ranges(conn, None):
            async with timer.tx(conn):
                differ = await conn.fetch(_h("compare_checkpoint_users"), p.checkpoint.id, lo, hi)
            if differ:
                raise Refused(
                    f"prune refused, nothing deleted: checkpoint {p.checkpoint.id}'s totals "
                    f"of user {differ[0]['user_id']} differ from its rows'"
                )
            await lease.renew()
        return
    await lease.renew(force=True)
    async with timer.tx(conn):
        await conn.execute(_q("prune_rebuild_users"), p.checkpoint.id)


def _audit_details(report: PruneReport) -> dict[str, Any]:
    p = report.plan
    return {
        "keep_days": p.keep_days,
        "checkpoint_id": p.checkpoint.id if p.checkpoint else None,
        "floors": p.floors,
        "rows": report.rows,
        "complete": report.complete,
        "checkpoint_users_removed": report.checkpoint_users_removed,
        "archive_sha256": report.archive_sha256,
        "partitions_dropped": report.drops.dropped,
    }


async def _move_floors(conn: Conn, p: Plan, actor: str, lease: Lease, timer: Timer) -> None:
    """Step 1, one transaction: the floors up to P's cuts (never down), with its audit row."""
    assert p.checkpoint is not None
    cp = p.checkpoint
    holder = lease.holder
    async with timer.tx(conn):
        await lease.renew(force=True)
        moved = await conn.fetchval(
            _q("prune_set_floors"),
            cp.id,
            p.floors["trades"],
            p.floors["transactions"],
            p.floors["sim_runs"],
            p.keep_days,
            holder,
        )
        if moved is None:  # P is not newer than what is pruned through: finish that
            await conn.fetchval(_q("prune_set_keep_days"), p.keep_days, holder)
            return
        await audit(
            conn,
            actor,
            "prune_floor",
            None,
            {
                "keep_days": p.keep_days,
                "checkpoint_id": cp.id,
                "previous_checkpoint_id": p.pruned_through,
                "floors": p.floors,
            },
        )


async def _delete_table(
    conn: Conn,
    table: str,
    p: Plan,
    report: PruneReport,
    pacer: Pacer,
    lease: Lease,
    writer: ArchiveWriter | None,
    started: float,
) -> bool:
    """Step 2 for one table; False when the run-time bound stopped it."""
    cursor, floor = p.start[table], p.floors[table]
    limits = pacer.limits
    while cursor < floor:
        if time.monotonic() - started >= limits.max_s:
            return False
        began = time.monotonic()
        try:
            if writer is None:
                batch = await _delete_batch(conn, table, p, lease, cursor, floor, pacer.rows)
            else:
                batch = await _delete_archived_batch(
                    conn, table, p, lease, writer, cursor, floor, pacer.rows
                )
        except Exception as exc:
            if is_lock_timeout(exc):
                raise Refused(
                    f"a batch of {table} waited {BATCH_LOCK_TIMEOUT} for a row lock; nothing of "
                    "it was deleted; run prune again"
                ) from None
            raise
        if batch is None:
            return True
        hi, deleted, held_s = batch
        worked_s = time.monotonic() - began
        report.working_s += worked_s
        if held_s is not None:  # None: an archived range with no row to delete, no transaction
            report.rows[table] += deleted
            report.batch(deleted, held_s)
            report.timer.transactions += 1
            report.timer.longest_s = max(report.timer.longest_s, held_s)
            pacer.held(held_s)
        cursor = hi
        pause_s = pacer.pause_s(worked_s)
        if pause_s > 0:
            paused = time.monotonic()
            await asyncio.sleep(pause_s)
            report.paused_s += time.monotonic() - paused
    return True


async def _batch_settings(conn: Conn, p: Plan, lease: Lease) -> None:
    """The start of each batch's transaction: its lock timeout, the change log's floors set
    locally (the trigger does not record retention's own deletes), the lease renewed."""
    await conn.execute(f"SET LOCAL lock_timeout = '{BATCH_LOCK_TIMEOUT}'")
    await conn.fetchrow(
        _q("prune_floor_settings"),
        p.floors["trades"],
        p.floors["transactions"],
        p.floors["sim_runs"],
    )
    await lease.renew()


async def _delete_batch(
    conn: Conn, table: str, p: Plan, lease: Lease, cursor: int, floor: int, rows: int
) -> tuple[int, int, float | None] | None:
    """One batch without an archive, one transaction: the next `rows` ids after the cursor up
    to the floor, deleted. (upper id, rows deleted, seconds held); None: nothing left."""
    began = time.monotonic()
    async with conn.transaction():
        await _batch_settings(conn, p, lease)
        hi = await conn.fetchval(_q(f"prune_next_{table}"), cursor, floor, rows)
        if hi is None:
            return None
        deleted = len(await conn.fetch(_q(f"prune_delete_{table}"), cursor, hi))
    return hi, deleted, time.monotonic() - began


async def _delete_archived_batch(
    conn: Conn,
    table: str,
    p: Plan,
    lease: Lease,
    writer: ArchiveWriter,
    cursor: int,
    floor: int,
    rows: int,
) -> tuple[int, int, float | None] | None:
    """One archived batch. Its rows' lines are read (one statement) and written to the archive
    (compressed, fsynced, pending in the manifest) before its transaction opens, so the
    delete's locks and snapshot are held for the delete alone. Exact all the same: the rows are
    at or below the floors, where nothing but a prune (one at a time: the lease) deletes and
    nothing writes; the delete takes only the ids archived and returns the count and digest of
    the lines it removed, which must equal the archive's, or it rolls back and the pending
    lines are cut away (a row changed since the prune verified it: run it again)."""
    hi = await conn.fetchval(_q(f"prune_next_{table}"), cursor, floor, rows)
    if hi is None:
        return None
    lines = sorted((r["id"], r["line"]) for r in await conn.fetch(_going(table), cursor, hi))
    if not lines:  # every run in the range is its user's latest
        return hi, 0, None
    writer.begin(table, lines)
    digest = hashlib.sha256("\n".join(line for _, line in lines).encode()).hexdigest()
    began = time.monotonic()
    try:
        async with conn.transaction():
            await _batch_settings(conn, p, lease)
            gone = await conn.fetchrow(_delete_returning(table), cursor, hi, [i for i, _ in lines])
            assert gone is not None
            if (gone["rows"], gone["hash"]) != (len(lines), digest):
                raise _Mismatch(
                    f"a batch of {table} ({cursor}, {hi}] deleted {gone['rows']} row(s), not "
                    f"the {len(lines)} archived, or other lines: a row changed since the prune "
                    "verified it; nothing of the batch was deleted; run prune again (`simctl "
                    "reconcile --full` names a changed row)"
                )
        held_s = time.monotonic() - began
    except _Mismatch:
        writer.settle(committed=False)
        raise
    # An archived batch whose commit is in doubt (the connection lost at COMMIT) stays pending
    # in the manifest: the next prune settles it from what the database holds.
    writer.done()
    return hi, len(lines), held_s


class _Mismatch(Refused):
    """The delete removed other rows than the batch archived (and rolled back)."""


def _going(table: str) -> str:
    """The canonical lines (sql/history.sql rows_<table>) of the rows a batch ($1, $2] deletes:
    for sim_runs only those that are not their user's latest (the CTE named like the table
    stands for it in rows_sim_runs)."""
    rows = _h(f"rows_{table}")
    if table != "sim_runs":
        return rows
    return f"WITH sim_runs AS ({_q('prune_going_sim_runs')}) {rows}"


def _delete_returning(table: str) -> str:
    """The archived batch's delete ($1, $2] of the ids $3, with the row count and SHA-256 of the
    canonical lines it removed, computed by the very rows_<table> query the archive's lines come
    from: the CTE named like the table is the deleted rows in it."""
    return (
        f"WITH {table} AS ({_q(f'prune_delete_archived_{table}')}) "  # noqa: S608 (named queries)
        "SELECT count(*)::int AS rows, "
        "encode(sha256(convert_to(string_agg(line, E'\\n' ORDER BY id), 'UTF8')), 'hex') AS hash "
        f"FROM ({_h(f'rows_{table}')}) r"
    )


# -- the archive ----------------------------------------------------------------------------------
async def _open_archive(conn: Conn, directory: Path) -> ArchiveWriter:
    """The archive in DIR, its interrupted batch (if any) settled from the database."""
    current = await conn.fetchrow(_q("prune_state"))
    assert current is not None
    floors = {t: int(current[FLOOR[t]]) for t in TABLES}
    writer = ArchiveWriter.open(directory, await deployment_id(conn), floors)
    pending = writer.pending
    if pending is not None:
        left = await conn.fetchval(
            _q(f"prune_present_{pending.table}"),
            [a for a, _ in pending.id_ranges],
            [b for _, b in pending.id_ranges],
        )
        if left not in (0, pending.rows):
            raise ArchiveError(
                f"{directory}: the interrupted batch of {pending.table} is partly deleted "
                f"({left} of {pending.rows} rows left): something else deleted rows"
            )
        writer.settle(committed=left == 0)
    writer.check_sizes()
    return writer


async def _record_checkpoints(conn: Conn, writer: ArchiveWriter) -> None:
    """The checkpoints whose windows the archive holds rows of (those at or below the floors
    above where the archive started), with their blocks."""
    current = await conn.fetchrow(_q("prune_state"))
    through = None if current is None else current["pruned_through"]
    if through is None:
        return
    start = writer.manifest["floors_at_start"]
    docs = []
    for c in await conn.fetch(_q("prune_window_checkpoints"), through):
        if all(c[CUT[t]] <= start[t] for t in TABLES):
            continue
        if str(c["id"]) in writer.manifest["checkpoints"]:
            continue
        blocks: dict[str, list[list[Any]]] = {t: [] for t in TABLES}
        for b in await conn.fetch(_q("prune_checkpoint_blocks"), c["id"]):
            blocks[b["tbl"]].append([b["block"], b["rows"], b["hash"]])
        docs.append(
            {
                "id": c["id"],
                "prev_id": c["prev_id"],
                "cut_at": c["cut_at"].isoformat(),
                "cuts": {t: c[CUT[t]] for t in TABLES},
                "prev_cuts": {t: c[f"prev_{CUT[t]}"] for t in TABLES},
                "rows": {t: c[ROWS[t]] for t in TABLES},
                "hashes": {t: c[HASH[t]] for t in TABLES},
                "window_hash": c["window_hash"],
                "chain_hash": c["chain_hash"],
                "prev_chain_hash": c["prev_chain_hash"],
                "blocks": blocks,
                # The window's rows the prune keeps (each user's latest run), as they are now:
                # the archive re-derives the window on its own even once they are deleted
                # later, into another archive.
                "kept": {
                    "sim_runs": [
                        [r["id"], r["line"]]
                        for r in await conn.fetch(_kept_runs(), c["prev_runs_cut"], c["runs_cut"])
                    ]
                },
            }
        )
    writer.add_checkpoints(docs)


def _kept_runs() -> str:
    """The canonical lines of the runs in ($1, $2] that are their user's latest."""
    return (
        f"WITH r AS ({_h('rows_sim_runs')}) "  # noqa: S608 (named queries only)
        "SELECT r.id, r.line FROM r WHERE NOT EXISTS (SELECT 1 FROM sim_runs s, sim_runs l "
        "WHERE s.id = r.id AND l.user_id = s.user_id AND l.scheduled_for > s.scheduled_for) "
        "ORDER BY r.id"
    )


@dataclass(slots=True)
class VerifyReport:
    files: int = 0
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    checkpoints_rederived: list[int] = field(default_factory=list)
    checkpoints_partial: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "rows": self.rows,
            "checkpoints_rederived": self.checkpoints_rederived,
            "checkpoints_not_rederivable": self.checkpoints_partial,
        }


async def verify_archive(conn: Conn, directory: Path) -> VerifyReport:
    """Every file against the manifest (SHA-256, rows, days), then every checkpoint window the
    archive holds in full re-derived from the lines (with the window's rows still in the
    database): blocks, table, window and chain hashes equal to the database's. ArchiveError
    names the first bad or missing file."""
    manifest = load_manifest(directory)
    if manifest is None:
        raise ArchiveError(f"{directory / 'manifest.json'}: missing (not an archive)")
    deployment = await deployment_id(conn)
    if manifest.get("deployment") != deployment:
        raise ArchiveError(
            f"{directory / 'manifest.json'}: belongs to another database "
            f"({manifest.get('deployment')}, this one is {deployment})"
        )
    report = VerifyReport()
    lines: dict[str, dict[int, tuple[str, str]]] = {t: {} for t in TABLES}
    for checked in check_files(directory, manifest):
        report.files += 1
        report.rows[checked.table] += len(checked.lines)
        held = lines[checked.table]
        for line in checked.lines:
            row_id = line_id(line)
            if row_id in held:
                raise ArchiveError(
                    f"{directory / checked.name}: row {row_id} is also in {held[row_id][1]}"
                )
            held[row_id] = (line, checked.name)
    start: Mapping[str, int] = manifest["floors_at_start"]
    entries = sorted(manifest["checkpoints"].items(), key=lambda kv: int(kv[0]))
    for key, entry in entries:
        doc = load_checkpoint(directory, entry)
        where = directory / entry["file"]
        db = await conn.fetchrow(_q("prune_checkpoint_by_id"), int(key))
        if db is None or db["state"] != "verified":
            raise ArchiveError(f"{where}: checkpoint {key} is not a verified checkpoint here")
        for name in ("window_hash", "chain_hash", "prev_chain_hash"):
            if db[name] != doc[name]:
                raise ArchiveError(f"{where}: {name} differs from the database's checkpoint {key}")
        stored: dict[str, list[list[Any]]] = {t: [] for t in TABLES}
        for b in await conn.fetch(_q("prune_checkpoint_blocks"), int(key)):
            stored[b["tbl"]].append([b["block"], b["rows"], b["hash"]])
        if stored != doc["blocks"]:
            raise ArchiveError(f"{where}: its blocks differ from the database's checkpoint {key}")
        if any(doc["prev_cuts"][t] < start[t] for t in TABLES):
            # Rows of this window were deleted before this archive began: not all here.
            report.checkpoints_partial.append(int(key))
            continue
        hashes = {}
        for t in TABLES:
            lo, hi = doc["prev_cuts"][t], doc["cuts"][t]
            window = {i: v for i, v in lines[t].items() if lo < i <= hi}
            merged = {i: line for i, (line, _) in window.items()}
            for row_id, line in doc.get("kept", {}).get(t, []):
                if merged.setdefault(row_id, line) != line:
                    raise ArchiveError(
                        f"{directory / window[row_id][1]}: {t} row {row_id} differs from the "
                        f"line {entry['file']} kept of it"
                    )
            for r in await conn.fetch(query(f"rows_{t}", "history.sql"), lo, hi):
                if merged.get(r["id"], r["line"]) != r["line"]:
                    source = window[r["id"]][1] if r["id"] in window else entry["file"]
                    raise ArchiveError(
                        f"{directory / source}: {t} row {r['id']} differs from the row still in "
                        "the database"
                    )
                merged[r["id"]] = r["line"]
            blocks = block_hashes(merged.items())
            expected = [tuple(b) for b in doc["blocks"][t]]
            if blocks != expected:
                raise ArchiveError(_bad_block(directory, t, int(key), blocks, expected, window))
            hashes[t] = table_hash(blocks)
            if hashes[t] != doc["hashes"][t]:
                raise ArchiveError(f"{where}: the {t} hash of checkpoint {key} does not re-derive")
        derived = window_hash(hashes)
        if (
            derived != doc["window_hash"]
            or chain_hash(doc["prev_chain_hash"], derived) != doc["chain_hash"]
        ):
            raise ArchiveError(f"{where}: the window and chain hashes of checkpoint {key} differ")
        report.checkpoints_rederived.append(int(key))
    return report


def _bad_block(
    directory: Path,
    table: str,
    checkpoint: int,
    derived: list[tuple[int, int, str]],
    expected: list[tuple[Any, ...]],
    window: Mapping[int, tuple[str, str]],
) -> str:
    """Name the file behind the first block that does not re-derive."""
    got = {b: (r, h) for b, r, h in derived}
    want = {b: (r, h) for b, r, h in expected}
    for block in sorted(set(got) | set(want)):
        if got.get(block) == want.get(block):
            continue
        files = sorted({name for i, (_, name) in window.items() if i // 4096 == block})
        if files:
            return (
                f"{directory / files[0]}: {table} block {block} of checkpoint {checkpoint} does "
                f"not re-derive (rows {got.get(block, (0,))[0]}, expected {want.get(block, (0,))[0]})"
            )
        return (
            f"{directory}: {table} block {block} of checkpoint {checkpoint} has no rows in the "
            "archive or the database (a file is missing or a row was deleted)"
        )
    return f"{directory}: {table} of checkpoint {checkpoint} does not re-derive"
