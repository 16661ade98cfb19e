"""Fairness, measured: many users × many slots per strategy on one market, mean P&L with its
confidence interval next to −(fees + slippage).

    scripts/bench-core --fairness [--users N] [--slots S] [--seed S | --stored]

Each user starts with 10,000 USD and no crypto on its own stretch of the market (consecutive,
disjoint stretches of one path from a year after the epoch on: their price moves are independent,
so the users are independent samples), then runs S slots 300 s apart through the engine's
own core (apply_run with fees of 10 bps and 5 bps of slippage), and is valued at the last slot.
P&L = final value − 10,000. Costs = fees + slippage (what the fills paid over the market price).
With no house edge and no hidden tailwind, E[P&L] = −E[costs]: the market part, P&L + costs,
is a martingale transform (decisions only use prices up to the slot) with mean 0. The table
gives the 95 % interval of mean P&L and of mean (P&L + costs); the latter must cover 0."""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from engine.accounting import FeeRule, UserState, apply_run, mark_to_market, run_stream
from engine.assets import ASSETS
from engine.market import Market, MarketParams
from engine.strategies import MarketView, make_strategy

START_USD = Decimal(10_000)
SLOT_S = 300
FEES = {a: FeeRule(10, Decimal(1)) for a in ASSETS}
SLIPPAGE_BPS = 5
STRATEGIES = ("random", "dca", "rebalance", "momentum")
_T95 = 1.96
FIRST_TICK = 525_600  # a year after the epoch
MAX_LOOKBACK = 1_440  # momentum's lookback bound: its history never reaches another user's stretch


@dataclass(frozen=True, slots=True)
class Row:
    strategy: str
    users: int
    slots: int
    mean_pnl: float
    half_pnl: float  # 95 % half-width
    mean_costs: float
    mean_market: float  # mean of P&L + costs
    half_market: float
    trades_per_run: float

    @property
    def covers(self) -> bool:
        """Does the 95 % interval of the market part cover 0 (no edge either way)?"""
        return abs(self.mean_market) <= self.half_market


def simulate(market: Market, strategy: str, users: int, slots: int) -> Row:
    """Run `users` independent users for `slots` slots each; see the module's docstring."""
    strat = make_strategy(strategy, {})
    step = max(1, SLOT_S // market.params.tick_s)
    window = slots * step + MAX_LOOKBACK  # the ticks one user's runs read
    pnls: list[float] = []
    market_parts: list[float] = []
    costs_all: list[float] = []
    trades = 0
    for uid in range(1, users + 1):
        # Disjoint stretches of one path, one after the other: the price moves of different
        # users are independent (a Brownian motion's increments are).
        start = FIRST_TICK + (uid - 1) * window + MAX_LOOKBACK
        state = UserState(uid, START_USD, {}, {})
        costs = Decimal(0)
        tick = start
        for k in range(slots):
            tick = start + k * step
            prices = market.prices_at(tick)
            view = MarketView(prices, _history(market, tick))
            result = apply_run(
                state,
                prices,
                FEES,
                strat,
                run_stream(market.params.seed, uid, market.tick_time(tick)),
                slippage_bps=SLIPPAGE_BPS,
                market=view,
            )
            for f in result.fills:
                fair = f.amount * prices[f.asset]
                slip = f.total_usd - fair if f.side == "buy" else fair - f.total_usd
                costs += f.fee_usd + slip
            trades += len(result.fills)
            state = UserState(uid, result.balance_usd, result.holdings, {})
        final = state.balance_usd + mark_to_market(state.holdings, market.prices_at(tick))
        pnl = final - START_USD
        pnls.append(float(pnl))
        costs_all.append(float(costs))
        market_parts.append(float(pnl + costs))
    return Row(
        strategy,
        users,
        slots,
        statistics.fmean(pnls),
        _half(pnls),
        statistics.fmean(costs_all),
        statistics.fmean(market_parts),
        _half(market_parts),
        trades / (users * slots),
    )


def _history(market: Market, tick: int) -> Callable[[str, int], Decimal]:
    def history(asset: str, back: int) -> Decimal:
        return market.price(asset, tick - back)

    return history


def _half(sample: list[float]) -> float:
    return _T95 * statistics.stdev(sample) / math.sqrt(len(sample))


def table(rows: list[Row], command: str) -> str:
    lines = [
        f"`{command}`",
        "",
        "| strategy | users × slots | trades/run | mean P&L (95 % CI), USD | −(fees + slippage), USD "
        "| P&L + costs (95 % CI) | covers 0 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.strategy} | {r.users:,} × {r.slots} | {r.trades_per_run:.2f} "
            f"| {r.mean_pnl:+.2f} ± {r.half_pnl:.2f} | {-r.mean_costs:+.2f} "
            f"| {r.mean_market:+.2f} ± {r.half_market:.2f} | {'yes' if r.covers else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simtools.fairness", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--users", type=int, default=2_000, help="users per strategy")
    parser.add_argument("--slots", type=int, default=200, help="slots per user (300 s apart)")
    parser.add_argument("--seed", type=int, default=42, help="market seed (model 2, defaults)")
    parser.add_argument(
        "--stored",
        action="store_true",
        help="use the market stored in DATABASE_URL's database instead of --seed",
    )
    parser.add_argument("--strategy", action="append", choices=STRATEGIES, help="repeatable")
    args = parser.parse_args(argv)
    market = _stored_market() if args.stored else _seeded(args.seed)
    rows = [simulate(market, s, args.users, args.slots) for s in args.strategy or STRATEGIES]
    source = "--stored" if args.stored else f"--seed {args.seed}"
    print(
        table(
            rows,
            f"scripts/bench-core --fairness --users {args.users} --slots {args.slots} {source}",
        ),
        end="",
    )


def _seeded(seed: int) -> Market:
    return Market(MarketParams(seed=seed, tick_s=60, epoch=datetime(2024, 1, 1, tzinfo=UTC)))


def _stored_market() -> Market:
    import asyncio

    from simconfig import load_settings
    from store.db import connection
    from store.market import load_market

    settings = load_settings()

    async def go() -> Market:
        async with connection(settings.database_url) as conn:
            return await load_market(conn, settings)

    return asyncio.run(go())


if __name__ == "__main__":
    main()
