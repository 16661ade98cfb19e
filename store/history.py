"""History: checkpoints of the engine's append-only rows, their hash chain, and reconcile judged
from the latest checkpoint in short transactions (docs/architecture.md, "History").

Why a chunked result is exact while runs commit meanwhile:
- The **cut** is taken under a SHARE lock on trades, transactions and sim_runs, held for the
  milliseconds of three `max(id)` probes: no writer is in the middle of an insert then, so every
  id up to the cut is committed (or rolled back for good), and every id after it is allocated
  later. The rows up to a cut never change again (the engine only inserts them; any UPDATE or
  DELETE is recorded by a trigger, and hashed blocks find one made behind the trigger's back).
- So a **window** (the ids after one cut up to the next) can be summed and hashed a range of ids
  at a time, each range in its own short transaction, and the sum is the same as in one snapshot.
- The **live comparison** runs a range of users at a time, each in one short REPEATABLE READ
  snapshot: users, portfolio, the rows that are not the engine's and the engine's rows after the
  cut are all read in that snapshot, so whatever a run committed before it is in both the live
  state and the rows, and whatever it committed after is in neither.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.assets import ASSETS
from engine.chain import BLOCK, TABLES, chain_hash, table_hash, window_hash
from store.audit import early_runs, future_prices
from store.db import Conn, Record, retrying_lock_timeouts
from store.errors import Refused, StoreError
from store.ledger import Discrepancy
from store.prices import valuations_query
from store.sqlfiles import queries, query

# One transaction sums and hashes at most this many ids of one table (64 blocks); fewer when
# the box is slow: a range is sized to CHUNK_S from how long the last one took (Paced).
CHUNK_IDS = BLOCK * 64
CHUNK_S = 0.5
# Users compared against the live state in one snapshot.
USER_CHUNK = 5000
# The history lease: a job renews it as it works; a job silent this long is taken over.
LEASE_S = 60
_RENEW_EVERY_S = 10.0

_ASSETS = tuple(a.lower() for a in ASSETS)
_WINDOW_COLS: dict[str, tuple[str, ...]] = {
    "trades": (
        *_ASSETS,
        *(f"buy_{a}" for a in _ASSETS),
        *(f"cost_{a}" for a in _ASSETS),
        "fees",
        "trades",
    ),
    "transactions": ("usd",),
    "sim_runs": ("runs", "last_slot"),
}
# Per table, the sim_checkpoints / sim_history columns of its cut, floor, hash and row count.
CUT = {"trades": "trades_cut", "transactions": "transactions_cut", "sim_runs": "runs_cut"}
FLOOR = {"trades": "trades_floor", "transactions": "transactions_floor", "sim_runs": "runs_floor"}
HASH = {"trades": "trades_hash", "transactions": "transactions_hash", "sim_runs": "runs_hash"}
ROWS = {"trades": "trades_rows", "transactions": "transactions_rows", "sim_runs": "runs_rows"}


def q(name: str) -> str:
    return queries("history.sql")[name]


def _valuations() -> str:
    """The valuation check at each user's latest slot as the base checkpoint and the rows
    since give it (judge_last_run): no lookup of a user's runs where the checkpoint knows it."""
    return valuations_query(q("judge_last_run"))


async def _one(conn: Conn, name: str, *args: object) -> Record:
    """The one row a named query of history.sql always returns."""
    row: Record | None = await conn.fetchrow(q(name), *args)
    if row is None:
        raise StoreError(f"history: {name} returned no row (is the database migrated?)")
    return row


class HistoryBusy(Refused):
    """Another checkpoint or prune holds the history lease."""


class LeaseLost(StoreError):
    """This job stalled past its lease and another may have taken over: it stops, keeps nothing
    half done, and the next job redoes it."""


@dataclass(frozen=True, slots=True)
class Cut:
    trades: int
    transactions: int
    runs: int
    at: datetime | None = None

    def of(self, table: str) -> int:
        return {"trades": self.trades, "transactions": self.transactions, "sim_runs": self.runs}[
            table
        ]

    @classmethod
    def of_checkpoint(cls, row: Record) -> Cut:
        return cls(row["trades_cut"], row["transactions_cut"], row["runs_cut"], row["cut_at"])


ORIGIN = Cut(0, 0, 0)


class Timer:
    """How long the longest transaction of a job held its snapshot and locks."""

    def __init__(self) -> None:
        self.longest_s = 0.0
        self.transactions = 0

    @asynccontextmanager
    async def tx(self, conn: Conn, **kwargs: Any) -> AsyncIterator[None]:
        start = time.monotonic()
        try:
            async with conn.transaction(**kwargs):
                yield
        finally:
            self.transactions += 1
            self.longest_s = max(self.longest_s, time.monotonic() - start)


class Lease:
    """One history job at a time (sim_history.lease_*): taken, renewed as the job works, given
    back at the end. No transaction stays open for it, so vacuum is never held back."""

    def __init__(self, conn: Conn, what: str, lease_s: int = LEASE_S) -> None:
        self.conn = conn
        self.lease_s = lease_s
        self.renew_every_s = min(_RENEW_EVERY_S, lease_s / 3)
        self.holder = f"{what} on {socket.gethostname()} pid {os.getpid()} ({uuid.uuid4().hex[:8]})"
        self._renewed = 0.0

    async def take(self) -> None:
        if await self.conn.fetchrow(q("lease_take"), self.holder, self.lease_s) is None:
            state = await _one(self.conn, "lease_state")
            until = state["lease_until"]
            raise HistoryBusy(
                f"history: {state['lease_holder']} holds the history lease until "
                f"{until.isoformat(timespec='seconds') if until else '?'}; one checkpoint or "
                "prune runs at a time"
            )
        self._renewed = time.monotonic()

    async def renew(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._renewed < self.renew_every_s:
            return
        if await self.conn.fetchrow(q("lease_renew"), self.holder, self.lease_s) is None:
            raise LeaseLost(
                f"history: the lease of {self.holder} ran out (the job stalled for more than "
                f"{self.lease_s} s); nothing half done is kept, run it again"
            )
        self._renewed = time.monotonic()

    async def release(self) -> None:
        await self.conn.execute(q("lease_release"), self.holder)


@asynccontextmanager
async def leased(conn: Conn, what: str, lease_s: int = LEASE_S) -> AsyncIterator[Lease]:
    """The history lease for the block (HistoryBusy when another job holds it)."""
    lease = Lease(conn, what, lease_s)
    await lease.take()
    try:
        yield lease
    finally:
        await lease.release()


async def take_cut(conn: Conn, timer: Timer | None = None) -> Cut:
    """A cut (see the module's docstring): SHARE locks for a few milliseconds, under a 2 s
    lock_timeout, retried with jitter when a long writer holds them."""
    clock = timer or Timer()

    async def attempt() -> Cut:
        async with clock.tx(conn):
            await conn.execute(q("lock_for_cut"))
            row = await _one(conn, "cut")
        return Cut(row["trades"], row["transactions"], row["runs"], row["at"])

    return await retrying_lock_timeouts(attempt, attempts=10)


class Paced:
    """Ranges of ids (lo, hi] sized to a time budget: a whole number of blocks, from one block
    to CHUNK_IDS, grown or shrunk from the time the caller's last range took (timed from the
    range's yield to the request for the next), so a transaction stays near CHUNK_S on a quiet
    box and on one five times as loaded alike. A range never splits a block: it ends where one
    ends or at hi, as _ranges."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.top = max(1, CHUNK_IDS // BLOCK)
        self.blocks = max(1, self.top // 4)
        self.clock = clock

    def ranges(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        start = lo
        while start < hi:
            step = BLOCK * self.blocks
            end = min(hi, ((start + 1) // step + 1) * step - 1)
            began = self.clock()
            yield start, end
            took = max(self.clock() - began, 1e-3)
            grown = int(self.blocks * CHUNK_S / took)
            self.blocks = max(1, min(self.top, 2 * self.blocks, grown))
            start = end


def _ranges(lo: int, hi: int, step: int) -> Iterator[tuple[int, int]]:
    """(lo, hi] in pieces (a, b] that never split a multiple of `step` from the ids after it
    below the next one: each piece's ids are within [k*step, (k+1)*step) for one k, so a block
    (id // BLOCK, BLOCK dividing step) is never split between two pieces."""
    start = lo
    while start < hi:
        end = min(hi, ((start + 1) // step + 1) * step - 1)
        yield start, end
        start = end


_SUM_COLS = (
    "usd",
    *_ASSETS,
    *(f"buy_{a}" for a in _ASSETS),
    *(f"cost_{a}" for a in _ASSETS),
    "fees",
    "trades",
    "runs",
)
# Kept as the latest, not summed: the user's latest slot (0016).
_SLOT = "last_slot"
# Per-user sums of the engine's rows, one row per user and range of ids: a session's own table
# (no WAL, nothing another session sees), NULL where a range has nothing for a column. The
# statements that need a user's total (the new checkpoint's totals, the live comparison) add
# up that user's rows through the index, a range of users at a time, so a window is aggregated
# once, never upserted. A walk over many windows (reconcile --full, prune's re-verification)
# folds them into pg_temp.sim_since every _FOLD_ROWS rows instead.
_FOLD_ROWS = 200_000
_NUMERIC = {"trades": "bigint", "runs": "bigint", "last_slot": "timestamptz"}
_PARTS_CREATE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS sim_parts (checkpoint_id bigint, user_id bigint, "
    + ", ".join(f"{c} {_NUMERIC.get(c, 'numeric')}" for c in (*_SUM_COLS, _SLOT))
    + "); CREATE INDEX IF NOT EXISTS sim_parts_user ON pg_temp.sim_parts (user_id)"
)
_PARTS_CLEAR = "TRUNCATE pg_temp.sim_parts"


async def _parts_reset(conn: Conn) -> None:
    await conn.execute(_PARTS_CREATE)
    await conn.execute(_PARTS_CLEAR)


def _parts_insert(table: str) -> str:
    cols = _WINDOW_COLS[table]
    return (
        f"INSERT INTO pg_temp.sim_parts (checkpoint_id, user_id, {', '.join(cols)}) "  # noqa: S608
        f"SELECT $4::bigint, w.* FROM ({q('window_' + table)}) w"
    )


def _fold(target: str) -> str:
    """Add the parts of users ($1, $2] into `target`: a range of users per transaction, so no
    fold holds a snapshot for longer than a range takes (temporary tables or not, a
    transaction's snapshot holds back vacuum everywhere). The latest slot is the later one."""
    cols = ", ".join((*_SUM_COLS, _SLOT))
    aggs = ", ".join([f"coalesce(sum({c}), 0)" for c in _SUM_COLS] + [f"max({_SLOT})"])
    sets = ", ".join(
        [f"{c} = t.{c} + EXCLUDED.{c}" for c in _SUM_COLS]
        + [f"{_SLOT} = greatest(t.{_SLOT}, EXCLUDED.{_SLOT})"]
    )
    return (
        f"INSERT INTO {target} AS t (checkpoint_id, user_id, {cols}) "  # noqa: S608
        f"SELECT checkpoint_id, user_id, {aggs} FROM pg_temp.sim_parts "
        f"WHERE user_id > $1 AND user_id <= $2 GROUP BY checkpoint_id, user_id "
        f"ON CONFLICT (checkpoint_id, user_id) DO UPDATE SET {sets}"
    )


def _blocks(table: str) -> str:
    return (
        f"WITH r AS ({q('rows_' + table)}) "  # noqa: S608 (constants only)
        f"SELECT (id / {BLOCK})::bigint AS block, count(*)::int AS rows, "
        "encode(sha256(convert_to(string_agg(line, E'\\n' ORDER BY id), 'UTF8')), 'hex') AS hash "
        "FROM r GROUP BY 1 ORDER BY 1"
    )


def _store_blocks(table: str) -> str:
    return (
        "INSERT INTO sim_checkpoint_blocks (checkpoint_id, tbl, block, rows, hash) "  # noqa: S608
        f"SELECT $3::bigint, '{table}', b.block, b.rows, b.hash FROM ({_blocks(table)}) b"
    )


@dataclass(slots=True)
class Walk:
    """One pass over windows of rows: how many rows of each table it read, and its problems."""

    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    problems: list[str] = field(default_factory=list)


async def _sum_range(
    conn: Conn,
    timer: Timer,
    lease: Lease,
    lo: Cut,
    hi: Cut,
    *,
    checkpoint_id: int,
    user_id: int | None = None,
    store_blocks: bool = False,
) -> dict[str, int]:
    """Sum the engine's rows with ids (lo, hi] per user into pg_temp.sim_parts (emptied first)
    under `checkpoint_id`, a range of ids per transaction; with store_blocks, also store their
    blocks' hashes for checkpoint_id."""
    rows = dict.fromkeys(TABLES, 0)
    await _parts_reset(conn)
    paced = Paced()
    for table in TABLES:
        insert = _parts_insert(table)
        for a, b in paced.ranges(lo.of(table), hi.of(table)):
            async with timer.tx(conn):
                await conn.execute(insert, a, b, user_id, checkpoint_id)
                if store_blocks:
                    await conn.execute(_store_blocks(table), a, b, checkpoint_id)
            await lease.renew()
        if store_blocks:
            counted = await conn.fetchval(q("count_blocks_rows"), checkpoint_id, table)
            rows[table] = int(counted or 0)
    return rows


async def user_ranges(conn: Conn, user_id: int | None) -> list[tuple[int, int]]:
    if user_id is not None:
        return [(user_id - 1, user_id)]
    top = int(await conn.fetchval(q("max_user")))
    return list(_ranges(0, top, USER_CHUNK))


async def since_table(conn: Conn) -> None:
    # Every statement planned for its own ids: a generic plan cannot see that `id > cut` is
    # the last few rows and may walk a user's whole history through another index. (First:
    # temp_buffers can only be set before the session's first temporary table.)
    await conn.execute(q("custom_plans"))
    await conn.execute(q("since_create"))
    await conn.execute(q("since_clear"))


def _describe(r: Record) -> list[Discrepancy]:
    out: list[Discrepancy] = []
    if r["balance_usd"] != r["exp_usd"]:
        out.append(Discrepancy(r["id"], "balance_usd", r["exp_usd"], r["balance_usd"]))
    for col in _ASSETS:
        if r[col] != r["exp_" + col]:
            out.append(Discrepancy(r["id"], col, r["exp_" + col], r[col]))
    if r["has_portfolio"] and r["usd_value"] != r["portfolio_value_usd"]:
        out.append(
            Discrepancy(r["id"], "portfolio_value_usd", r["usd_value"], r["portfolio_value_usd"])
        )
    return out


@dataclass(slots=True)
class Judgement:
    """The live state judged against a base and the rows since."""

    discrepancies: list[Discrepancy] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    cut: Cut = ORIGIN
    rows_since: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))


async def _judge(
    conn: Conn,
    timer: Timer,
    lease: Lease | None,
    *,
    base_id: int,
    since: Cut,
    audit_from: Cut,
    slippage_bps: int,
    user_id: int | None,
    keep_since: bool = False,
) -> Judgement:
    """Every user's live state against: the rows that are not the engine's, the base
    checkpoint's totals (`base_id`, 0 for none), the engine's rows after `since` (plus what
    pg_temp.sim_since already holds when keep_since). Trade prices and runs' times are audited
    for the ids after `audit_from`."""
    renew = lease or _NoLease()
    if not keep_since:
        await since_table(conn)
    now = await take_cut(conn, timer)
    judged = Judgement(cut=now)
    await _sum_range(conn, timer, renew, since, now, checkpoint_id=0, user_id=user_id)
    for table in TABLES:
        judged.rows_since[table] = max(0, now.of(table) - since.of(table))
    # Prices of the trades, and the times of the runs, after the audit's start.
    paced = Paced()
    for a, b in paced.ranges(audit_from.trades, now.trades):
        async with timer.tx(conn, isolation="repeatable_read", readonly=True):
            bad = await conn.fetch(query("reconcile_trade_prices"), user_id, slippage_bps, a, b)
        judged.discrepancies += [_price_discrepancy(r, slippage_bps) for r in bad]
        await renew.renew()
    for a, b in paced.ranges(audit_from.runs, now.runs):
        async with timer.tx(conn, isolation="repeatable_read", readonly=True):
            early = await early_runs(conn, user_id, (a, b))
        judged.findings += [r.describe() for r in early]
        await renew.renew()
    if user_id is None:
        judged.findings += [p.describe() for p in await future_prices(conn)]
    # The live state, a range of users per snapshot.
    for lo, hi in await user_ranges(conn, user_id):
        async with timer.tx(conn, isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(
                q("compare_users"), lo, hi, base_id, now.trades, now.transactions
            )
            values = await conn.fetch(_valuations(), lo, hi, base_id, now.runs)
        for r in rows:
            judged.discrepancies += _describe(r)
        judged.discrepancies += [
            Discrepancy(
                r["user_id"],
                "portfolio value at the stored prices of the last run",
                r["expected_usd"],
                r["usd_value"],
            )
            for r in values
        ]
        await renew.renew()
    return judged


class _NoLease(Lease):
    def __init__(self) -> None:  # a reconcile takes no lease: it writes nothing shared
        pass

    async def renew(self, force: bool = False) -> None:
        return None


def _price_discrepancy(r: Record, slippage_bps: int) -> Discrepancy:
    what = f"trade {r['id']} {r['trade_type']} {r['asset']} at {r['generated_at'].isoformat()}"
    if r["stored_usd"] is None:
        what += " (no stored price for its tick)"
    else:
        what += f" (stored price {r['stored_usd']}, slippage {slippage_bps} bps)"
    return Discrepancy(r["user_id"], f"{what}: price_usd", r["expected_usd"], r["price_usd"])


async def recorded_changes(conn: Conn, limit: int = 20) -> list[str]:
    """Each recorded UPDATE or DELETE of an engine row, naming the table, the row and the
    checkpoint whose window holds it."""
    out = []
    for r in await conn.fetch(q("history_changes"), limit):
        holder = await conn.fetchval(q("window_of"), r["tbl"], r["row_id"])
        where = (
            f"in the window of checkpoint {holder}"
            if holder is not None
            else "after the latest checkpoint's cut"
        )
        out.append(
            f"{r['tbl']} row {r['row_id']} {where}: {r['op']} by role {r['by_role']} at "
            f"{r['at'].isoformat(timespec='seconds')}"
        )
    return out


async def verify_window(
    conn: Conn, timer: Timer, lease: Lease, checkpoint: Record, prev_cut: Cut, *, sum_into: bool
) -> list[str]:
    """A stored window against its rows now: every block's count and hash, its table hashes
    from the stored blocks, the window and chain hashes. With sum_into, the rows are added to
    pg_temp.sim_since on the way (reconcile --full walks the totals with the hashes)."""
    problems: list[str] = []
    cid = checkpoint["id"]
    cut = Cut.of_checkpoint(checkpoint)
    hashes = {}
    if sum_into:
        await _parts_reset(conn)
    pending = 0

    async def fold() -> None:
        top = await conn.fetchval("SELECT max(user_id) FROM pg_temp.sim_parts")
        for lo, hi in _ranges(0, int(top or 0), USER_CHUNK):
            async with timer.tx(conn):
                await conn.execute(_fold("pg_temp.sim_since"), lo, hi)
            await lease.renew()
        await conn.execute(_PARTS_CLEAR)

    paced = Paced()
    for table in TABLES:
        stored = {
            r["block"]: (r["rows"], r["hash"])
            for r in await conn.fetch(q("table_blocks"), cid, table)
        }
        hashes[table] = table_hash((b, n, h) for b, (n, h) in sorted(stored.items()))
        if hashes[table] != checkpoint[HASH[table]]:
            problems.append(
                f"checkpoint {cid}: the stored blocks of {table} no longer give its hash"
            )
        seen: set[int] = set()
        for a, b in paced.ranges(prev_cut.of(table), cut.of(table)):
            async with timer.tx(conn):
                found = await conn.fetch(_blocks(table), a, b)
                if sum_into:
                    status = await conn.execute(_parts_insert(table), a, b, None, 0)
                    pending += int(status.rsplit(" ", 1)[-1])
            if pending >= _FOLD_ROWS:
                await fold()
                pending = 0
            for r in found:
                seen.add(r["block"])
                if stored.get(r["block"]) != (r["rows"], r["hash"]):
                    problems.append(
                        await _name_block(conn, cid, table, r["block"], prev_cut, cut, stored)
                    )
            for block in stored:
                if (a + 1) // BLOCK <= block <= b // BLOCK and block not in seen:
                    problems.append(
                        await _name_block(conn, cid, table, block, prev_cut, cut, stored)
                    )
            await lease.renew()
    if pending:
        await fold()
    window = window_hash(hashes)
    if window != checkpoint["window_hash"]:
        problems.append(f"checkpoint {cid}: its window hash does not match its tables' hashes")
    return problems


async def _name_block(
    conn: Conn,
    cid: int,
    table: str,
    block: int,
    prev_cut: Cut,
    cut: Cut,
    stored: dict[int, tuple[int, str]],
) -> str:
    """A block whose rows changed since they were hashed: the rows the trigger recorded there,
    or the trades that no longer add up, or the block's ids."""
    lo = max(prev_cut.of(table), block * BLOCK - 1)
    hi = min(cut.of(table), (block + 1) * BLOCK - 1)
    rows = [r["row_id"] for r in await conn.fetch(q("changes_in_range"), table, lo, hi)]
    if not rows and table == "trades":
        rows = [
            r["id"]
            for r in await conn.fetch(
                q("suspect_trades"), lo, hi, prev_cut.transactions, cut.transactions
            )
        ]
    had = stored.get(block, (0, ""))[0]
    what = (
        f"row(s) {', '.join(str(r) for r in rows)}"
        if rows
        else f"a row with id in {lo + 1}..{hi} (block of {had} row(s) when hashed)"
    )
    return f"checkpoint {cid}: {table} {what} changed or deleted after the checkpoint hashed it"


@dataclass(slots=True)
class CheckpointReport:
    id: int
    state: str
    prev_id: int | None
    cut: Cut
    rows: dict[str, int]
    chain_hash: str | None
    problems: list[str]
    seconds: float
    longest_tx_s: float


async def checkpoint(
    conn: Conn, taken_by: str, *, slippage_bps: int, lease_s: int = LEASE_S
) -> CheckpointReport:
    """Take a checkpoint and verify it (see the module's docstring). Failed (with its problems
    named) when an engine row was changed or deleted, when the previous window's rows no
    longer give their hashes, or when the live state disagrees with the new totals."""
    timer = Timer()
    start = time.monotonic()
    async with leased(conn, f"checkpoint by {taken_by}", lease_s) as lease:
        await conn.execute(q("drop_building"))
        await conn.execute(q("custom_plans"))
        prev = await conn.fetchrow(q("latest_checkpoint"))
        prev_cut = Cut.of_checkpoint(prev) if prev is not None else ORIGIN
        problems = await recorded_changes(conn)
        cut = await take_cut(conn, timer)
        cid = int(
            await conn.fetchval(
                q("checkpoint_begin"),
                None if prev is None else prev["id"],
                cut.at,
                cut.trades,
                cut.transactions,
                cut.runs,
                taken_by,
            )
        )
        if prev is not None:
            history = await _one(conn, "history_state")
            pruned = history["pruned_through"]
            if pruned is None or pruned < prev["id"]:
                # The previous window again: its rows still give the hashes it stored.
                earlier = (
                    await conn.fetchrow(q("checkpoint_by_id"), prev["prev_id"])
                    if prev["prev_id"] is not None
                    else None
                )
                earlier_cut = Cut.of_checkpoint(earlier) if earlier is not None else ORIGIN
                problems += await verify_window(
                    conn, timer, lease, prev, earlier_cut, sum_into=False
                )
        rows = await _sum_range(
            conn, timer, lease, prev_cut, cut, checkpoint_id=cid, store_blocks=True
        )
        # The new totals: the previous ones plus the window, one insert per user.
        for lo, hi in await user_ranges(conn, None):
            async with timer.tx(conn):
                await conn.execute(
                    q("checkpoint_add_window"),
                    cid,
                    0 if prev is None else prev["id"],
                    lo,
                    hi,
                    cut.runs,
                )
            await lease.renew()
        hashes = {
            table: table_hash(
                (r["block"], r["rows"], r["hash"])
                for r in await conn.fetch(q("table_blocks"), cid, table)
            )
            for table in TABLES
        }
        window = window_hash(hashes)
        chained = chain_hash(None if prev is None else prev["chain_hash"], window)
        judged = await _judge(
            conn, timer, lease, base_id=cid, since=cut, audit_from=prev_cut,
            slippage_bps=slippage_bps, user_id=None,
        )  # fmt: skip
        problems += [str(d) for d in judged.discrepancies] + judged.findings
        users = int(await conn.fetchval(q("checkpoint_users_count"), cid))
        state = "failed" if problems else "verified"
        await lease.renew(force=True)
        async with conn.transaction():
            await conn.execute(
                q("checkpoint_finish"),
                cid,
                state,
                rows["trades"],
                rows["transactions"],
                rows["sim_runs"],
                hashes["trades"],
                hashes["transactions"],
                hashes["sim_runs"],
                window,
                chained if state == "verified" else None,
                users,
                "\n".join(problems[:50]) if problems else None,
            )
            if state == "failed":
                # A failed checkpoint keeps its chain row and reason, not its totals.
                await conn.execute(q("checkpoint_drop_users"), cid)
            else:
                await conn.execute(q("checkpoint_forget_users"))
    return CheckpointReport(
        id=cid,
        state=state,
        prev_id=None if prev is None else prev["id"],
        cut=cut,
        rows=rows,
        chain_hash=chained if state == "verified" else None,
        problems=problems,
        seconds=time.monotonic() - start,
        longest_tx_s=timer.longest_s,
    )


@dataclass(slots=True)
class ReconcileReport:
    discrepancies: list[Discrepancy]
    findings: list[str]
    base: int | None  # the checkpoint judged from (None: the beginning or the baseline)
    full: bool
    checkpoints_verified: int
    rows_since: dict[str, int]
    seconds: float
    longest_tx_s: float

    @property
    def clean(self) -> bool:
        return not self.discrepancies and not self.findings


async def reconcile(
    conn: Conn, *, slippage_bps: int, full: bool = False, user_id: int | None = None
) -> ReconcileReport:
    """Judge the live state from the latest verified checkpoint (its totals plus the rows
    since; prices of the trades since), or with full: walk every retained window from the
    beginning (or the checkpoint retention pruned through), verifying each checkpoint's hashes
    and totals on the way, then the rows since the last. No transaction holds a snapshot longer
    than one range of ids or users takes."""
    timer = Timer()
    start = time.monotonic()
    findings = await recorded_changes(conn)
    verified = 0
    if not full:
        latest = await conn.fetchrow(q("latest_checkpoint"))
        base = 0 if latest is None else int(latest["id"])
        since = ORIGIN if latest is None else Cut.of_checkpoint(latest)
        judged = await _judge(
            conn, timer, None, base_id=base, since=since, audit_from=since,
            slippage_bps=slippage_bps, user_id=user_id,
        )  # fmt: skip
        return ReconcileReport(
            judged.discrepancies,
            findings + judged.findings,
            base or None,
            False,
            0,
            judged.rows_since,
            time.monotonic() - start,
            timer.longest_s,
        )
    history = await _one(conn, "history_state")
    await since_table(conn)
    chain = await conn.fetch(q("verified_checkpoints"))
    pruned = history["pruned_through"]
    walked = ORIGIN
    prev_hash: str | None = None
    prev_id: int | None = None
    lease = _NoLease()
    for cp in chain:
        cut = Cut.of_checkpoint(cp)
        if cp["prev_id"] != prev_id:
            findings.append(
                f"checkpoint {cp['id']}: follows checkpoint {cp['prev_id']}, not {prev_id}"
            )
        if pruned is not None and cp["id"] < pruned:
            prev_hash, prev_id, walked = cp["chain_hash"], cp["id"], cut
            continue
        if pruned is not None and cp["id"] == pruned:
            # Its rows are gone (the archive holds them): start from its verified totals.
            for lo, hi in await user_ranges(conn, user_id):
                async with timer.tx(conn):
                    await conn.execute(q("since_from_checkpoint"), cp["id"], lo, hi)
            prev_hash, prev_id, walked = cp["chain_hash"], cp["id"], cut
            verified += 1
            continue
        findings += await verify_window(conn, timer, lease, cp, walked, sum_into=True)
        if chain_hash(prev_hash, cp["window_hash"]) != cp["chain_hash"]:
            findings.append(
                f"checkpoint {cp['id']}: its chain hash does not follow from the previous"
            )
        if await conn.fetchval(q("checkpoint_users_count"), cp["id"]):
            for lo, hi in await user_ranges(conn, user_id):
                for r in await conn.fetch(q("compare_checkpoint_users"), cp["id"], lo, hi):
                    findings.append(
                        f"checkpoint {cp['id']}: user {r['user_id']}: stored totals differ "
                        f"from its rows': {_differences(r['stored'], r['walked'])}"
                    )
        prev_hash, prev_id, walked = cp["chain_hash"], cp["id"], cut
        verified += 1
    audit_from = ORIGIN
    if pruned is not None:
        # The trades at or below the pruned checkpoint's cut are gone with their prices' need.
        audit_from = Cut.of_checkpoint(await _one(conn, "checkpoint_by_id", pruned))
    judged = await _judge(
        conn, timer, None, base_id=0, since=walked, audit_from=audit_from,
        slippage_bps=slippage_bps, user_id=user_id, keep_since=True,
    )  # fmt: skip
    return ReconcileReport(
        judged.discrepancies,
        findings + judged.findings,
        pruned,
        True,
        verified,
        judged.rows_since,
        time.monotonic() - start,
        timer.longest_s,
    )


def _differences(stored: dict[str, Any] | None, walked: dict[str, Any] | None) -> str:
    """The totals that differ, as `name stored -> walked`."""
    a, b = stored or {}, walked or {}
    unknown = a.get(_SLOT) is None  # stored before 0016 (a walk always knows it): not compared
    skip = ("checkpoint_id", "user_id", *((_SLOT,) if unknown else ()))
    keys = [k for k in (a.keys() | b.keys()) if k not in skip]
    diffs = [
        f"{k} {a.get(k, 0)} -> {b.get(k, 0)}"
        for k in sorted(keys)
        if str(a.get(k, 0)) != str(b.get(k, 0))
    ]
    return ", ".join(diffs) or "(a row missing)"


async def checkpoint_due(conn: Conn, interval_s: int, max_rows: int = 0) -> bool:
    """No checkpoint started within the interval (a failed one counts: it is retried then), or
    (max_rows > 0) at least max_rows engine rows were written after the latest one's cut."""
    due: bool = await conn.fetchval(q("checkpoint_due"), interval_s, max_rows)
    return due


async def latest(conn: Conn) -> Record | None:
    """The newest verified checkpoint."""
    row: Record | None = await conn.fetchrow(q("latest_checkpoint"))
    return row
