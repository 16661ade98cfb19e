"""The pure core's speed on one core: user-runs per second for a batch of users at one slot.

    scripts/bench-core [--users N] [--strategy random]      (python -m simtools.bench.core)
    scripts/bench-core --fairness [--users N] [--slots S]   (python -m simtools.fairness)

Prices are computed once per asset for the slot (as a worker does), not per user; every run goes
through apply_run, including its proof of the money rules. No database, no Redis."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from decimal import Decimal

from engine.accounting import FeeRule, UserState, apply_run, run_stream
from engine.assets import ASSETS
from engine.market import Market, MarketParams
from engine.strategies import MarketView, make_strategy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50_000, help="runs to time (default 50,000)")
    parser.add_argument("--strategy", default="random", help="random, dca, rebalance or momentum")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many passes")
    args = parser.parse_args()
    market = Market(MarketParams(seed=42, tick_s=60, epoch=datetime(2024, 1, 1, tzinfo=UTC)))
    slot = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    tick = market.tick_of(slot)
    prices = market.prices_at(tick)
    view = MarketView(prices, lambda asset, back: market.price(asset, tick - back))
    fees = {a: FeeRule(10, Decimal(1)) for a in ASSETS}
    strategy = make_strategy(args.strategy, {})
    states = [
        UserState(
            uid,
            Decimal(1000 + uid % 50_000),
            {"BTC": Decimal("0.05"), "ETH": Decimal("1.5"), "ADA": Decimal(1000)}
            if uid % 2
            else {},
            {},
        )
        for uid in range(1, args.users + 1)
    ]
    best = 0.0
    fills = 0
    for _ in range(args.repeat):
        started = time.perf_counter()
        fills = 0
        for state in states:
            result = apply_run(
                state,
                prices,
                fees,
                strategy,
                run_stream(42, state.user_id, slot),
                slippage_bps=5,
                market=view,
            )
            fills += len(result.fills)
        best = max(best, len(states) / (time.perf_counter() - started))
    print(
        f"core: {best:,.0f} user-runs/s on one core ({args.strategy}, {len(states):,} users, "
        f"{fills / len(states):.2f} trades per run, best of {args.repeat})"
    )


if __name__ == "__main__":
    main()
