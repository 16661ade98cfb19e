"""Money an operator moves: USD deposits and adjustments, and audited changes of a holding.
Each keeps the portfolio's value at the prices of the user's last run."""

from __future__ import annotations

from decimal import Decimal

from engine.accounting import mark_to_market
from engine.assets import ASSETS
from engine.money import EIGHT_DP
from store.db import Conn, Record
from store.errors import Refused
from store.runs import audit
from store.sqlfiles import query
from store.users import AuditDetails, audit_change, locked_user, refuse_closed


async def move_usd(
    conn: Conn, actor: str, user_id: int, amount: Decimal, kind: str, reason: str | None
) -> AuditDetails:
    """A deposit (positive) or an adjustment (signed, with a reason), ledger row and balance."""
    async with conn.transaction():
        before = await locked_user(conn, user_id)
        refuse_closed(before, kind)
        if before["balance_usd"] + amount < 0:
            raise Refused(
                f"user {user_id}: balance {before['balance_usd']:f} cannot go below 0 by {amount:f}"
            )
        row = await conn.fetchrow(
            query("move_usd"), user_id, kind, amount, f"simctl:{actor}", reason or kind
        )
        assert row is not None
        return await audit_change(
            conn,
            actor,
            kind,
            user_id,
            before,
            amount=str(amount),
            reason=reason,
            transaction_id=row["transaction_id"],
        )


async def adjust_holding(
    conn: Conn, actor: str, user_id: int, asset: str, delta: Decimal, reason: str
) -> AuditDetails:
    """An audited change of one holding; reconcile explains holdings by these rows."""
    async with conn.transaction():
        refuse_closed(await locked_user(conn, user_id), "adjustment")
        held = await conn.fetchrow(query("holdings_for_update"), user_id)
        if held is None:
            await conn.execute(query("ensure_portfolios"), [user_id])
            held = await conn.fetchrow(query("holdings_for_update"), user_id)
        assert held is not None
        reserved: Decimal = await conn.fetchval(query("reserved_of_user"), user_id, asset)
        current: Decimal = held[asset.lower()]
        if current + delta < reserved:
            raise Refused(
                f"user {user_id}: {asset} holding {current:f} cannot go below its reserved "
                f"{reserved:f}"
            )
        after = await conn.fetchrow(query("change_holding"), user_id, asset, delta)
        assert after is not None
        await revalue(conn, user_id, after)
        details = {
            "asset": asset,
            "delta": str(delta),
            "reason": reason,
            "before": f"{current:f}",
            "after": f"{after[asset.lower()]:f}",
            **await flow_value(conn, asset, delta),
        }
        await audit(conn, actor, "adjust_holding", user_id, details)
        return details


async def flow_value(conn: Conn, asset: str, quantity: Decimal) -> dict[str, str | None]:
    """A crypto flow's price and value when it happens (the latest stored price), recorded in
    its audit row: P&L counts the flow as a contribution at this value, never as a gain."""
    price: Decimal | None = await conn.fetchval(query("latest_price"), asset)
    return {
        "price_usd": None if price is None else str(price),
        # At the ledger's scale: a quantity times a price has 16 decimals.
        "value_usd": None if price is None else f"{(quantity * price).quantize(EIGHT_DP):f}",
    }


async def revalue(conn: Conn, user_id: int, held: Record) -> None:
    """Keep portfolio.usd_value (= users.portfolio_value_usd) equal to the holdings × the prices
    of the user's last run, after a change of holdings between runs."""
    rows = await conn.fetch(query("prices_at_last_slot"), user_id)
    prices = {r["asset"]: r["price_usd"] for r in rows}
    holdings = {a: held[a.lower()] for a in ASSETS}
    if any(holdings[a] and prices[a] is None for a in ASSETS):
        return  # no stored price yet for a held asset: the next run values it
    value = mark_to_market(holdings, {a: p or Decimal(0) for a, p in prices.items()})
    await conn.execute(query("set_value"), user_id, value)
