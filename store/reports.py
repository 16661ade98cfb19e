"""Data for `simctl report`: a user's state after each run, priced as the runs priced it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from engine.accounting import mark_to_market
from engine.assets import ASSETS
from engine.money import usd_half_even
from engine.pricing import ImportSpan, PriceBook
from simconfig import Settings
from store.db import Conn
from store.market import load_market
from store.runs import batch_prelude, imported_prices
from store.sqlfiles import query

ZERO = Decimal(0)


async def equity_points(conn: Conn, user_id: int, settings: Settings) -> list[dict[str, Any]]:
    """(slot, cash, holdings value, total, contributions, P&L, buys, sells) after each run,
    oldest first, priced as the runs priced them.

    The state before the first run is today's minus every trade and every money movement
    (sim_contributions), and movements are replayed at their time, so a deposit, a withdrawal
    or an airdrop moves the contributions, never the P&L (total − contributions)."""
    async with conn.transaction(readonly=True):
        runs = await conn.fetch(query("equity_curve"), user_id)
        user = await conn.fetchrow(query("user_row"), user_id)
        held = await conn.fetchrow(query("holdings_row"), user_id)
        flows = await conn.fetch(query("user_contributions"), user_id)
        spans = await batch_prelude(conn)
        book = PriceBook(
            await load_market(conn, settings),
            (ImportSpan(s.asset, s.first_at, s.last_at) for s in spans),
        )
        book.add_imported(
            await imported_prices(conn, book.import_points(r["scheduled_for"] for r in runs))
        )
    assert user is not None
    holdings = {a: (held[a.lower()] if held else ZERO) for a in ASSETS}
    cash = user["balance_usd"]
    for run in runs:
        for t in run["trades"]:
            holdings[t["asset"]] -= _signed(t)
            cash -= Decimal(t["after"]) - Decimal(t["before"])
    for f in flows:
        if f["asset"] is None:
            cash -= f["value_usd"]
        else:
            holdings[f["asset"]] -= f["quantity"]
    contributed = ZERO
    pending = list(flows)  # in time order
    points: list[dict[str, Any]] = []
    for run in runs:
        while pending and pending[0]["at"] <= run["scheduled_for"]:
            f = pending.pop(0)
            contributed += f["value_usd"]
            if f["asset"] is None:
                cash += f["value_usd"]
            else:
                holdings[f["asset"]] += f["quantity"]
        for t in run["trades"]:
            holdings[t["asset"]] += _signed(t)
            cash += Decimal(t["after"]) - Decimal(t["before"])
        value = mark_to_market(holdings, book.prices_at(run["scheduled_for"]))
        total = cash + value
        points.append(
            {
                "at": run["scheduled_for"],
                "cash": cash,
                "holdings_value": value,
                "total": total,
                "contributions": usd_half_even(contributed),
                "pnl": usd_half_even(total - contributed),
                "buys": sum(1 for t in run["trades"] if t["side"] == "buy"),
                "sells": sum(1 for t in run["trades"] if t["side"] == "sell"),
            }
        )
    return points


async def current_pnl(conn: Conn, user_id: int) -> dict[str, Any] | None:
    """The user's P&L now, from sim_pnl (the one definition users show and readers use)."""
    row = await conn.fetchrow(query("user_pnl"), user_id)
    return None if row is None else dict(row.items())


def _signed(trade: dict[str, str]) -> Decimal:
    amount = Decimal(trade["amount"])
    return amount if trade["side"] == "buy" else -amount
