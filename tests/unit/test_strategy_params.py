"""Strategy parameters are a closed, bounded set per strategy: nothing that looks like a knob
for an outcome is accepted, and a portfolio outside a rebalance's weights is rebalanced."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from engine.accounting import FeeRule, UserState, apply_run, run_stream
from engine.assets import ASSETS
from engine.errors import UnknownStrategy
from engine.strategies import MAX_PARAMS_BYTES, make_strategy
from tests.unit.test_accounting import SLOT


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("random", {"win_rate": "0.99"}, "win_rate"),
        ("random", {"max_trades": 2, "target_profit": "1000"}, "target_profit"),
        ("dca", {"usd": "50", "boost": True}, "boost"),
        ("momentum", {"lookback": 5, "edge": 1}, "edge"),
        ("rebalance", {"weights": {"BTC": "0.5"}, "guaranteed": "yes"}, "guaranteed"),
        ("random", {"max_fraction": "2"}, "max_fraction"),
        ("random", {"max_trades": True}, "max_trades"),
        ("dca", {"usd": "1e12"}, "usd"),
        ("momentum", {"threshold": "-0.1"}, "threshold"),
        ("rebalance", {"band": "1.5"}, "band"),
        ("rebalance", {"weights": {"BTC": "1.5"}}, "weights"),
    ],
)
def test_unknown_or_out_of_range_parameters_are_refused_naming_the_key(
    name: str, params: dict[str, Any], key: str
) -> None:
    with pytest.raises(UnknownStrategy) as caught:
        make_strategy(name, params)
    assert f"parameter {key}" in str(caught.value)


def test_parameters_have_a_size_limit() -> None:
    big = {"assets": ["BTC"] * (MAX_PARAMS_BYTES // 4)}
    with pytest.raises(UnknownStrategy, match="bytes"):
        make_strategy("dca", big)
    assert make_strategy("dca", {"usd": "50", "assets": ["btc"]}).name == "dca"


def test_rebalance_sells_what_its_weights_do_not_name() -> None:
    prices = dict.fromkeys(ASSETS, Decimal(100))
    holdings = {a: Decimal(0) for a in ASSETS} | {"ADA": Decimal(100)}
    state = UserState(5, Decimal(0), holdings, {})  # no cash at all: all of it in ADA
    result = apply_run(
        state,
        prices,
        dict.fromkeys(ASSETS, FeeRule(10, Decimal(1))),
        make_strategy("rebalance", {"weights": {"BTC": "0.5", "ETH": "0.5"}}),
        run_stream(1, 5, SLOT),
        slippage_bps=5,
    )
    sides = {(f.asset, f.side) for f in result.fills}
    assert ("ADA", "sell") in sides and ("BTC", "buy") in sides
    assert result.holdings["ADA"] == 0
