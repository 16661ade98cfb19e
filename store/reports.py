"""Data for `simctl report`: a user's state after each run, priced as the runs priced it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from engine.accounting import mark_to_market
from engine.assets import ASSETS
from engine.pricing import ImportSpan, PriceBook
from simconfig import Settings
from store.db import Conn
from store.market import load_market
from store.runs import batch_prelude, imported_prices
from store.sqlfiles import query

ZERO = Decimal(0)


async def equity_points(conn: Conn, user_id: int, settings: Settings) -> list[dict[str, Any]]:
    """(slot, cash, holdings value, total, buys, sells) after each run, oldest first.

    Holdings before the first run are today's holdings minus what the runs traded, so
    withdrawals and adjustments made in between shift the early part of the curve."""
    async with conn.transaction(readonly=True):
        runs = await conn.fetch(query("equity_curve"), user_id)
        user = await conn.fetchrow(query("user_row"), user_id)
        held = await conn.fetchrow(query("holdings_row"), user_id)
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
    for run in runs:
        for t in run["trades"]:
            holdings[t["asset"]] -= _signed(t)
    first_trade = next((t for r in runs for t in r["trades"]), None)
    cash = Decimal(first_trade["before"]) if first_trade else user["balance_usd"]
    points: list[dict[str, Any]] = []
    for run in runs:
        for t in run["trades"]:
            holdings[t["asset"]] += _signed(t)
            cash = Decimal(t["after"])
        value = mark_to_market(holdings, book.prices_at(run["scheduled_for"]))
        points.append(
            {
                "at": run["scheduled_for"],
                "cash": cash,
                "holdings_value": value,
                "total": cash + value,
                "buys": sum(1 for t in run["trades"] if t["side"] == "buy"),
                "sells": sum(1 for t in run["trades"] if t["side"] == "sell"),
            }
        )
    return points


def _signed(trade: dict[str, str]) -> Decimal:
    amount = Decimal(trade["amount"])
    return amount if trade["side"] == "buy" else -amount
