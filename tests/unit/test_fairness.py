"""Fairness, measured at test size: on the model's market, each strategy's mean P&L is minus
its fees and slippage, within the sample's statistical bound (no house edge, no tailwind).
Seeds and users are fixed, so the result is deterministic."""

from __future__ import annotations

import pytest

from simtools.fairness.table import _seeded, simulate, table


@pytest.mark.parametrize("strategy", ["random", "dca", "rebalance", "momentum"])
def test_mean_pnl_is_minus_the_costs_within_four_standard_errors(strategy: str) -> None:
    row = simulate(_seeded(42), strategy, users=200, slots=25)
    four_se = row.half_market / 1.96 * 4
    assert abs(row.mean_market) <= four_se, table([row], "test")
    assert row.mean_costs > 0  # every strategy here trades, and trading costs something
