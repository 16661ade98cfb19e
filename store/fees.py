"""fee_config as the core's FeeRule per asset."""

from __future__ import annotations

from engine.accounting import FeeRule
from engine.assets import ASSETS
from store.db import Conn
from store.errors import StoreError
from store.sqlfiles import query


async def load_fees(conn: Conn) -> dict[str, FeeRule]:
    """Every asset's trading fee and minimum notional; StoreError if one is missing."""
    rows = await conn.fetch(query("fee_rules"))
    fees = {r["asset"]: FeeRule(r["fee_bps"], r["min_notional_usd"]) for r in rows}
    missing = [a for a in ASSETS if a not in fees]
    if missing:
        raise StoreError(f"fee_config has no row for {', '.join(missing)}")
    return fees
