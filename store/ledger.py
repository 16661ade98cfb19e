"""The ledger's checks: every balance and holding rebuilt from the ledger rows and compared, and
on an adopted database how far the legacy ledger was from explaining each opening state."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from engine.assets import ASSETS
from store.db import Conn
from store.sqlfiles import query


@dataclass(frozen=True, slots=True)
class Discrepancy:
    user_id: int
    field: str
    expected: Decimal
    found: Decimal

    def __str__(self) -> str:
        return f"user {self.user_id}: {self.field} expected {self.expected:f} found {self.found:f}"


@dataclass(frozen=True, slots=True)
class LegacyGap:
    """An adopted user's opening state minus what the legacy ledger explains (nonzero only)."""

    user_id: int
    gaps: dict[str, Decimal]  # "usd" and each asset's lower-case name
    value_unequal: bool


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


async def legacy_gap(conn: Conn, user_id: int | None = None) -> list[LegacyGap]:
    """Per adopted user, how far the legacy ledger was from explaining the opening state
    (USD and each asset: opening minus explained; nonzero only)."""
    rows = await conn.fetch(query("legacy_gap"), user_id)
    return [
        LegacyGap(
            r["user_id"],
            {k: r[k] for k in ("usd", *(a.lower() for a in ASSETS)) if r[k] != 0},
            r["value_unequal"],
        )
        for r in rows
    ]
