"""Operator reads and single-user steering: status, reconcile, making a user due now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from engine.assets import ASSETS
from store.db import Conn
from store.errors import NotFound, Refused
from store.sqlfiles import query


async def resolve_user(conn: Conn, user: str) -> int:
    """A numeric id or an email to a user id; NotFound naming it otherwise."""
    text = user.strip()
    if text.isdigit():
        uid = int(text)
        if uid < 2**63 and await conn.fetchval("SELECT 1 FROM users WHERE id = $1", uid):
            return uid
        raise NotFound(f"no user with id {text}")
    uid_or_none: int | None = await conn.fetchval(query("user_by_email"), text)
    if uid_or_none is None:
        raise NotFound(f"no user with email {text!r}")
    return uid_or_none


def ineligibility(row: asyncpg.Record) -> str | None:
    """Why a user is not eligible for simulation, or None if it is."""
    if row["deleted_at"] is not None:
        return "user is deleted"
    if not row["is_active"]:
        return "user is deactivated"
    if not row["sim_enabled"]:
        return "simulation is disabled for this user"
    if row["sim_paused"]:
        return "simulation is paused for this user"
    return None


async def make_due_now(conn: Conn, user_id: int) -> tuple[datetime, datetime | None]:
    """Make an eligible user's slot due now: (slot, the end of the user's live lease or None).
    Never sets or extends a lease (see the make_due_now query). Refused with the reason when
    the user is not eligible; nothing changes then."""
    async with conn.transaction():
        row = await conn.fetchrow(query("user_for_update"), user_id)
        if row is None:
            raise NotFound(f"no user with id {user_id}")
        reason = ineligibility(row)
        if reason is not None:
            raise Refused(f"user {user_id} not run: {reason}")
        row = await conn.fetchrow(query("make_due_now"), user_id)
    assert row is not None
    return row["sim_next_run_at"], row["lease_until"]


async def run_of_slot(conn: Conn, user_id: int, slot: datetime) -> dict[str, Any] | None:
    row = await conn.fetchrow(query("run_of_slot"), user_id, slot)
    return None if row is None else dict(row.items())


async def status(conn: Conn) -> dict[str, Any]:
    row = await conn.fetchrow(query("status"))
    assert row is not None
    return dict(row.items())


@dataclass(frozen=True, slots=True)
class Discrepancy:
    user_id: int
    field: str
    expected: Decimal
    found: Decimal

    def __str__(self) -> str:
        return f"user {self.user_id}: {self.field} expected {self.expected:f} found {self.found:f}"


async def reconcile(conn: Conn, user_id: int | None = None) -> list[Discrepancy]:
    """Every difference between stored balances/holdings and what the ledger rows explain."""
    out: list[Discrepancy] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(query("reconcile"), user_id)
    for r in rows:
        if r["balance_usd"] != r["exp_usd"]:
            out.append(Discrepancy(r["id"], "balance_usd", r["exp_usd"], r["balance_usd"]))
        for asset in ASSETS:
            col = asset.lower()
            if r[col] != r["exp_" + col]:
                out.append(Discrepancy(r["id"], col, r["exp_" + col], r[col]))
        if r["has_portfolio"] and r["usd_value"] != r["portfolio_value_usd"]:
            out.append(
                Discrepancy(
                    r["id"], "portfolio_value_usd", r["usd_value"], r["portfolio_value_usd"]
                )
            )
    return out


async def was_adopted(conn: Conn) -> bool:
    """Whether `migrate` adopted this database's existing platform tables (else there is no
    legacy ledger and no opening state to explain)."""
    adopted: bool = await conn.fetchval(query("was_adopted"))
    return adopted


async def legacy_gap(conn: Conn, user_id: int | None = None) -> list[dict[str, Any]]:
    """Per adopted user, how far the legacy ledger was from explaining the opening state
    (USD and each asset: opening minus explained; nonzero only)."""
    rows = await conn.fetch(query("legacy_gap"), user_id)
    out: list[dict[str, Any]] = []
    for r in rows:
        gaps = {k: r[k] for k in ("usd", *(a.lower() for a in ASSETS)) if r[k] != 0}
        out.append({"user_id": r["user_id"], "gaps": gaps, "value_unequal": r["value_unequal"]})
    return out
