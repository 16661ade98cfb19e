"""The rows of a user's tear sheet (`simctl report`): runs (with the prices they used), trades
and flows, read in one snapshot. The series themselves are computed by engine.equity."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from engine.assets import ASSETS
from engine.equity import Curve, Flow, RunRow, TradeRow, build_curve, unexplained
from store.db import Conn
from store.errors import NotFound
from store.sqlfiles import query


@dataclass(frozen=True, slots=True)
class ReportData:
    user_id: int
    strategy: str | None
    params: dict[str, Any]
    interval_s: int
    runs: list[RunRow]
    flows: list[Flow]
    # What the rows do not explain (normally zero; an adopted user's opening state).
    opening_cash: Decimal
    opening_holdings: dict[str, Decimal]
    # The read side's P&L now (sim_pnl, at the latest stored prices); None for a deleted user.
    pnl_now_usd: Decimal | None

    def curve(self) -> Curve:
        """The P&L series (engine.equity) of these rows."""
        return build_curve(self.runs, self.flows, self.opening_cash, self.opening_holdings)


async def report_data(conn: Conn, user_id: int) -> ReportData:
    """Everything the report shows about a user, from one repeatable-read snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        user = await conn.fetchrow(query("report_user"), user_id)
        if user is None:
            raise NotFound(f"no user with id {user_id}")
        run_rows = await conn.fetch(query("report_runs"), user_id)
        trade_rows = await conn.fetch(query("report_trades"), user_id)
        flow_rows = await conn.fetch(query("report_flows"), user_id)
    trades: dict[int, list[TradeRow]] = defaultdict(list)
    for t in trade_rows:
        trades[t["sim_run_id"]].append(
            TradeRow(
                t["trade_type"],
                t["asset"],
                t["amount"],
                t["price_usd"],
                t["fee_usd"],
                t["cash_delta"],
                t["balance_after"],
            )
        )
    runs = [
        RunRow(
            r["scheduled_for"],
            r["finished_at"] or r["scheduled_for"],
            # A run stored every asset's tick at its slot; an asset never priced counts as 0.
            {a: r[a.lower()] or Decimal(0) for a in ASSETS},
            tuple(trades.get(r["id"], ())),
        )
        for r in run_rows
    ]
    flows = [
        Flow(f["at"], f["kind"], f["usd"], f["asset"], f["quantity"], f["price_usd"])
        for f in flow_rows
    ]
    cash, held = unexplained(user["balance_usd"], {a: user[a.lower()] for a in ASSETS}, runs, flows)
    params = user["sim_params"]
    return ReportData(
        user_id=user_id,
        strategy=user["sim_strategy"],
        params=params if isinstance(params, dict) else {},
        interval_s=user["sim_interval_s"],
        runs=runs,
        flows=flows,
        opening_cash=cash,
        opening_holdings=held,
        pnl_now_usd=user["pnl_now_usd"],
    )
