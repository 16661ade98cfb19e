"""The market ticker's writes: the model's current tick into price_history, idempotently."""

from __future__ import annotations

from datetime import datetime

from engine.assets import ASSETS
from engine.market import Market
from store.db import Conn
from store.market import current_market
from store.runs import begin_batch
from store.sqlfiles import query


async def write_ticks(conn: Conn, market: Market, at: datetime | None = None) -> int:
    """Write each asset's model price at the tick containing `at` (default, and at most,
    Postgres's now(): never a tick later than now, whatever this host's clock says), unless
    imported history covers it. Returns the number of rows written."""
    async with conn.transaction():
        start = await begin_batch(conn)
        now = start.now if at is None else min(at, start.now)
        tick = market.tick_of(now)
        tick_at = market.tick_time(tick)
        spans = {s.asset: s for s in start.spans}
        market = await current_market(conn, market, start.market_version)
        rows = [
            (a, tick_at, market.price(a, tick))
            for a in ASSETS
            if a not in spans or not (spans[a].first_at <= tick_at <= spans[a].last_at)
        ]
        status: str = await conn.execute(
            query("insert_model_prices"),
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
        )
    return int(status.rsplit(" ", 1)[-1])
