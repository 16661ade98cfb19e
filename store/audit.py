"""Reconcile's audit of time: runs that happened before they were due, and stored prices of
ticks that have not come. Either means something ran or wrote ahead of its time (a forged job,
a skewed clock) and is named, never repaired silently."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from store.db import ALL_IDS, Conn
from store.sqlfiles import query


@dataclass(frozen=True, slots=True)
class EarlyRun:
    run_id: int
    user_id: int
    scheduled_for: datetime
    finished_at: datetime

    def describe(self) -> str:
        return (
            f"run {self.run_id} of user {self.user_id}: slot {self.scheduled_for.isoformat()} "
            f"is later than its commit at {self.finished_at.isoformat()}"
        )


@dataclass(frozen=True, slots=True)
class FuturePrice:
    asset: str
    at: datetime
    price_usd: Decimal
    source: str

    def describe(self) -> str:
        return f"{self.asset} price at {self.at.isoformat()} ({self.source}) is later than now"


async def early_runs(
    conn: Conn, user_id: int | None = None, ids: tuple[int, int] = (0, ALL_IDS)
) -> list[EarlyRun]:
    """Every run (of `user_id`, or of everyone; run ids in `ids` = (after, up to)) whose slot
    is later than its commit."""
    rows = await conn.fetch(query("audit_future_runs"), user_id, *ids)
    return [EarlyRun(r["id"], r["user_id"], r["scheduled_for"], r["finished_at"]) for r in rows]


async def future_prices(conn: Conn) -> list[FuturePrice]:
    """Every stored price of a tick later than Postgres's now()."""
    rows = await conn.fetch(query("audit_future_prices"))
    return [FuturePrice(r["asset"], r["at"], r["price_usd"], r["source"]) for r in rows]


async def audit_time(conn: Conn, user_id: int | None = None) -> list[str]:
    """Both audits, one line per finding, in one read-only snapshot (for `simctl reconcile`)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        runs = await early_runs(conn, user_id)
        prices = await future_prices(conn) if user_id is None else []
    return [r.describe() for r in runs] + [p.describe() for p in prices]
