"""Data access for the run pipeline: claim due users, lock and load a batch, write its runs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple

from engine.accounting import RunResult, slot_from_us
from engine.assets import ASSETS
from store.db import Conn, Pool, retrying
from store.errors import Misconfigured
from store.sqlfiles import query

_ZERO = Decimal(0)
# Shared by every user without an open withdrawal (most of them); read-only.
NO_RESERVATIONS: Mapping[str, Decimal] = MappingProxyType({a: _ZERO for a in ASSETS})
# The Fill fields apply_batch sends as numeric columns, in the statement's order.
_FILL_AMOUNTS = ("amount", "price_usd", "total_usd", "fee_usd", "balance_before", "balance_after")


class Claim(NamedTuple):
    user_id: int
    slot: datetime


@dataclass(frozen=True, slots=True)
class Lease:
    """Slots taken together, in user id order, and when their lease ends (it also names their
    jobs: a slot re-claimed after its lease expired gets a new job, whatever happened to the old
    one). Slots are Unix microseconds, as jobs carry them. A claim's lease is made of `batches`,
    one sim_leases row each (`lease_id`), which the batch's job gives back when it commits."""

    user_ids: list[int]
    slots_us: list[int]
    until: datetime | None
    recovered: int = 0
    lease_id: int | None = None
    batches: tuple[Lease, ...] = ()
    locked: bool = True  # False: another scheduler was claiming, so nothing was looked at

    @property
    def claims(self) -> list[Claim]:
        return [
            Claim(uid, slot_from_us(us))
            for uid, us in zip(self.user_ids, self.slots_us, strict=True)
        ]


class LoadedUser(NamedTuple):
    """A locked user row as the worker needs it."""

    user_id: int
    balance_usd: Decimal
    next_run_at: datetime | None
    eligible: bool
    strategy: str | None
    params_json: str  # sim_params as jsonb prints it: equal parameters, equal text
    fail_count: int
    has_portfolio: bool
    holdings: Mapping[str, Decimal]
    reserved: Mapping[str, Decimal]


@dataclass(frozen=True, slots=True)
class Span:
    asset: str
    first_at: datetime
    last_at: datetime


async def materialize_null_slots(conn: Conn, limit: int) -> int:
    """Give users with a NULL slot the slot now(); returns how many."""
    status: str = await conn.execute(query("materialize_null_slots"), limit)
    return int(status.rsplit(" ", 1)[-1])


async def claim_due(conn: Conn, limit: int, lease_s: int, batch_size: int = 400) -> Lease:
    """Lease up to `limit` due users for `lease_s` seconds, oldest slot first, in batches of
    `batch_size` (each batch one sim_leases row; ids sorted within a batch). Claims are taken
    one at a time across schedulers (the claim row of sim_locks, locked for the transaction,
    tried, never waited for): a scheduler that finds another one claiming claims nothing this
    time."""
    async with conn.transaction():
        if await conn.fetchval(query("try_claim_lock")) is None:
            return Lease([], [], None, locked=False)
        rows = await conn.fetch(query("claim_due"), limit, float(lease_s), batch_size)
    batches = tuple(
        Lease(r["user_ids"], r["slots_us"], r["until"], lease_id=r["lease_id"])
        for r in rows
        if r["lease_id"] is not None
    )
    return Lease(
        [uid for b in batches for uid in b.user_ids],
        [us for b in batches for us in b.slots_us],
        min((b.until for b in batches if b.until is not None), default=None),
        rows[0]["recovered"] if rows else 0,
        batches=batches,
    )


async def vacuum_leases(conn: Conn) -> None:
    """VACUUM sim_leases: a few ms for the rows of a second of batches. A role that may not
    vacuum it gets Postgres's warning and autovacuum's pace (see migration 0007)."""
    await conn.execute("VACUUM (SKIP_LOCKED) sim_leases")


async def release_lease(conn: Conn, lease_id: int | None) -> None:
    """Give back a batch's lease (apply_batch does it itself when the batch wrote runs)."""
    if lease_id is not None:
        await conn.execute(query("release_lease"), lease_id)


@dataclass(frozen=True, slots=True)
class BatchStart:
    """What a batch's transaction reads first, holding the runs' side of the import fence."""

    spans: list[Span]
    market_version: int | None  # the newest stored (a process reloads its market when it changed)
    now: datetime  # the transaction's now() in Postgres: no slot later than it runs


async def begin_batch(conn: Conn) -> BatchStart:
    """Take the runs' side of the price-import fence for this transaction (it never waits for
    another batch) and read the imported spans, the market version and Postgres's now()."""
    row = await conn.fetchrow(query("batch_prelude"))
    assert row is not None
    spans = [
        Span(a, datetime.fromisoformat(f), datetime.fromisoformat(t)) for a, f, t in row["spans"]
    ]
    return BatchStart(spans, row["market_version"], row["db_now"])


async def batch_prelude(conn: Conn) -> list[Span]:
    """begin_batch's imported spans."""
    return (await begin_batch(conn)).spans


async def prelude(conn: Conn) -> tuple[list[Span], int | None]:
    """begin_batch's imported spans and newest stored market version."""
    start = await begin_batch(conn)
    return start.spans, start.market_version


async def deployment_id(conn: Conn) -> str:
    """The database's identity (migration 0008): jobs carry it, the default queue is named
    after it."""
    found: str | None = await conn.fetchval(query("deployment_id"))
    if found is None:
        raise Misconfigured("the database has no deployment identity: run `simctl migrate`")
    return found


async def deployment_id_retrying(pool: Pool) -> str:
    """deployment_id on a pool connection, again if the connection is lost (a process starting
    while Postgres restarts)."""

    async def once() -> str:
        async with pool.acquire() as conn:
            return await deployment_id(conn)

    return await retrying(once)


async def lock_batch(conn: Conn, user_ids: Sequence[int]) -> list[LoadedUser]:
    """Lock the users in id order and load balance, holdings and reservations."""
    rows = await conn.fetch(query("lock_batch"), list(user_ids))
    out = []
    for r in rows:
        # Positional, in the statement's column order: holdings and reservations in ASSETS order.
        uid, balance, next_run_at, eligible, strategy, params, fails, has_portfolio, *amounts = r
        reserved = amounts[6:]
        out.append(
            LoadedUser(
                user_id=uid,
                balance_usd=balance,
                next_run_at=next_run_at,
                eligible=eligible,
                strategy=strategy,
                params_json=params,
                fail_count=fails,
                has_portfolio=has_portfolio,
                holdings=dict(zip(ASSETS, amounts[:6], strict=True)),
                reserved=NO_RESERVATIONS
                if reserved.count(None) == len(reserved)
                else {a: v or _ZERO for a, v in zip(ASSETS, reserved, strict=True)},
            )
        )
    return out


async def imported_prices(
    conn: Conn, points: Sequence[tuple[str, datetime]]
) -> dict[tuple[str, datetime], Decimal]:
    """The latest imported price at or before each (asset, time)."""
    if not points:
        return {}
    rows = await conn.fetch(
        query("imported_prices"), [p[0] for p in points], [p[1] for p in points]
    )
    return {(r["asset"], r["at"]): r["price_usd"] for r in rows}


async def ensure_portfolios(conn: Conn, user_ids: Sequence[int]) -> None:
    """Create the missing portfolio rows (users made by another service without one)."""
    if user_ids:
        await conn.execute(query("ensure_portfolios"), list(user_ids))


@dataclass(frozen=True, slots=True)
class RunWrite:
    slot: datetime
    result: RunResult


async def apply_batch(
    conn: Conn,
    runs: Sequence[RunWrite],
    started_at: datetime,
    model_prices: Iterable[tuple[str, datetime, Decimal]],
    lease_id: int | None = None,
) -> list[tuple[int, int]]:
    """Write every run of a batch in one statement, and give back its lease; returns (run_id,
    user_id) pairs."""
    if not runs:
        await release_lease(conn, lease_id)
        return []
    rows = await conn.fetch(
        query("apply_batch"), *batch_args(runs, started_at, model_prices, lease_id)
    )
    return [(r["run_id"], r["user_id"]) for r in rows]


def batch_args(
    runs: Sequence[RunWrite],
    started_at: datetime,
    model_prices: Iterable[tuple[str, datetime, Decimal]],
    lease_id: int | None = None,
) -> list[Any]:
    """apply_batch's parameters for these runs (and the lease the batch gives back)."""
    # Column-wise, each column one comma-separated text (see apply_batch in queries.sql), each
    # built by one comprehension: about half the CPU of appending value by value.
    results = [run.result for run in runs]
    holdings = [r.holdings for r in results]
    fills = [(r.user_id, f) for r in results for f in r.fills]
    cols = [
        ",".join([str(r.user_id) for r in results]),
        ",".join([run.slot.isoformat() for run in runs]),
        ",".join([str(len(r.fills)) for r in results]),
        ",".join([str(r.balance_usd) for r in results]),
        *(",".join([str(h[asset]) for h in holdings]) for asset in ASSETS),
        ",".join([str(r.value_usd) for r in results]),
    ]
    trades = [
        ",".join([str(uid) for uid, _ in fills]),
        ",".join([f.side for _, f in fills]),
        ",".join([f.asset for _, f in fills]),
        *(",".join([str(getattr(f, name)) for _, f in fills]) for name in _FILL_AMOUNTS),
    ]
    prices: list[list[str]] = [[], [], []]
    for asset, at, price in model_prices:
        prices[0].append(asset)
        prices[1].append(at.isoformat())
        prices[2].append(str(price))
    return [*cols, started_at, *trades, *(",".join(c) for c in prices), lease_id]


async def record_failure(
    conn: Conn, user_id: int, error: str, retry_base_s: int, max_failures: int
) -> tuple[int, bool]:
    """Count a failed attempt with its error and backoff; returns (failures, now paused)."""
    row = await conn.fetchrow(query("record_failure"), user_id, error, retry_base_s, max_failures)
    if row is None:
        return 0, False
    return row["sim_fail_count"], row["sim_paused"]


async def audit(
    conn: Conn,
    actor: str,
    action: str,
    user_id: int | None,
    details: Mapping[str, Any],
) -> int:
    """Write one admin_audit row; `actor` is a key fingerprint or 'engine', never a key."""
    audit_id: int = await conn.fetchval(query("audit"), actor, action, user_id, dict(details))
    return audit_id
