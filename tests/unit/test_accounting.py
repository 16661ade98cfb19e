"""Properties of run accounting for arbitrary states, prices and strategies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.accounting import FeeRule, RunResult, UserState, apply_run, check_result, run_stream
from engine.assets import ASSETS
from engine.errors import InvalidUserState, InvariantViolation, UnknownStrategy
from engine.strategies import MarketView, make_strategy

qty = st.decimals(min_value=Decimal(0), max_value=Decimal("5000"), places=8)
usd = st.decimals(min_value=Decimal(0), max_value=Decimal("10000000"), places=8)
price = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("200000"), places=8)
holdings_st = st.fixed_dictionaries({a: qty for a in ASSETS})
prices_st = st.fixed_dictionaries({a: price for a in ASSETS})
fee_st = st.builds(FeeRule, st.integers(0, 200), st.decimals(Decimal(0), Decimal(50), places=2))
strategy_st = st.sampled_from(
    [
        ("random", {}),
        ("random", {"max_trades": 8, "max_fraction": "1"}),
        ("dca", {"usd": "250", "assets": ["BTC", "ADA"]}),
        ("rebalance", {"weights": {"BTC": "0.4", "ETH": "0.4", "USDT": "0.1"}, "band": "0.01"}),
        ("momentum", {"lookback": 5, "threshold": "0", "fraction": "0.5"}),
    ]
)
SLOT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@st.composite
def states(draw: Any) -> UserState:
    holdings = draw(holdings_st)
    reserved = {a: draw(st.decimals(Decimal(0), holdings[a], places=8)) for a in ASSETS}
    return UserState(draw(st.integers(1, 10**9)), draw(usd), holdings, reserved)


def run(
    state: UserState,
    prices: dict[str, Decimal],
    fee: FeeRule,
    strat: tuple[str, Any],
    slot: datetime = SLOT,
    slippage_bps: int = 5,
) -> RunResult:
    history = MarketView(prices=prices, history=lambda a, k: prices[a] * Decimal("0.9"))
    return apply_run(
        state,
        prices,
        dict.fromkeys(ASSETS, fee),
        make_strategy(*strat),
        run_stream(7, state.user_id, slot),
        slippage_bps=slippage_bps,
        market=history,
    )


@settings(max_examples=300, deadline=None)
@given(states(), prices_st, fee_st, strategy_st)
def test_money_rules_hold_for_any_state(
    state: UserState, prices: dict[str, Decimal], fee: FeeRule, strat: tuple[str, Any]
) -> None:
    result = run(state, prices, fee, strat)
    # Balance change equals the sum of ledger amounts; each trade's delta is its ledger amount.
    assert result.balance_usd - state.balance_usd == sum(
        (f.delta for f in result.fills), Decimal(0)
    )
    for fill in result.fills:
        expected = (
            -(fill.total_usd + fill.fee_usd)
            if fill.side == "buy"
            else fill.total_usd - fill.fee_usd
        )
        assert fill.balance_after - fill.balance_before == expected
        assert fill.total_usd >= fee.min_notional_usd  # nothing below the minimum notional
        assert fill.amount == fill.amount.quantize(Decimal("0.00000001"))
        assert fill.fee_usd >= fill.total_usd * fee.fee_bps / 10_000
    assert result.balance_usd >= 0
    for a in ASSETS:
        assert result.holdings[a] >= state.reserved[a]  # reserved crypto is never sold
        moved = sum(
            (f.amount if f.side == "buy" else -f.amount for f in result.fills if f.asset == a),
            Decimal(0),
        )
        assert result.holdings[a] == state.holdings[a] + moved
    # Same inputs, identical outputs.
    assert run(state, prices, fee, strat) == result


@settings(max_examples=100, deadline=None)
@given(states(), prices_st, fee_st)
def test_value_is_conserved_up_to_fees_and_slippage(
    state: UserState, prices: dict[str, Decimal], fee: FeeRule
) -> None:
    """Marked at the fill-free market price, no run creates value: equity can only drop by
    fees, slippage and rounding, never rise (an honest simulator)."""
    result = run(state, prices, fee, ("random", {"max_trades": 6}), slippage_bps=0)

    def equity(balance: Decimal, holdings: Any) -> Decimal:
        return balance + sum((holdings[a] * prices[a] for a in ASSETS), Decimal(0))

    assert equity(result.balance_usd, result.holdings) <= equity(state.balance_usd, state.holdings)


def test_random_strategy_trades_and_loses_only_to_the_market() -> None:
    prices = {
        a: Decimal(p)
        for a, p in zip(ASSETS, ["65000", "3200", "1", "1", "0.5", "0.4"], strict=True)
    }
    state = UserState(
        1, Decimal("10000"), dict.fromkeys(ASSETS, Decimal(1)), dict.fromkeys(ASSETS, Decimal(0))
    )
    counts = [
        len(
            run(
                state, prices, FeeRule(10, Decimal(1)), ("random", {}), SLOT + timedelta(minutes=i)
            ).fills
        )
        for i in range(200)
    ]
    assert 0 in counts and max(counts) == 3 and sum(counts) > 150


def test_different_slots_give_different_runs_same_slot_the_same() -> None:
    prices = dict.fromkeys(ASSETS, Decimal("10"))
    state = UserState(
        5, Decimal("10000"), dict.fromkeys(ASSETS, Decimal(10)), dict.fromkeys(ASSETS, Decimal(0))
    )
    fee = FeeRule(10, Decimal(1))
    runs = {
        run(state, prices, fee, ("random", {"max_trades": 5}), SLOT + timedelta(seconds=i)).fills
        for i in range(20)
    }
    assert len(runs) > 10
    assert run(state, prices, fee, ("random", {}), SLOT) == run(
        state, prices, fee, ("random", {}), SLOT
    )


def test_reserved_more_than_held_sells_none_of_it_and_trades_the_rest() -> None:
    # Legacy rows (an adopted database) may reserve more than is held: the run goes on, never
    # selling that asset, and may still buy it.
    held = dict.fromkeys(ASSETS, Decimal(1000))
    state = UserState(1, Decimal(100_000), held, {"BTC": Decimal(5000)})
    prices = dict.fromkeys(ASSETS, Decimal(1))
    sides: set[tuple[str, str]] = set()
    for minute in range(400):
        slot = SLOT + timedelta(minutes=minute)
        result = run(state, prices, FeeRule(10, Decimal(1)), ("random", {}), slot)
        sides |= {(f.asset, f.side) for f in result.fills}
        assert not any(f.asset == "BTC" and f.side == "sell" for f in result.fills)
    assert ("BTC", "buy") in sides
    assert {side for asset, side in sides if asset != "BTC"} == {"buy", "sell"}


def test_negative_reservation_is_refused() -> None:
    state = UserState(1, Decimal(10), {"BTC": Decimal(1)}, {"BTC": Decimal(-2)})
    with pytest.raises(InvalidUserState, match="reservation"):
        run(state, dict.fromkeys(ASSETS, Decimal(1)), FeeRule(10, Decimal(1)), ("random", {}))


def test_negative_holding_is_refused() -> None:
    state = UserState(1, Decimal(10), {"ETH": Decimal(-1)}, {})
    with pytest.raises(InvalidUserState, match="negative ETH"):
        run(state, dict.fromkeys(ASSETS, Decimal(1)), FeeRule(10, Decimal(1)), ("random", {}))


def test_a_tampered_result_is_caught() -> None:
    state = UserState(1, Decimal(1000), dict.fromkeys(ASSETS, Decimal(0)), {})
    result = run(
        state, dict.fromkeys(ASSETS, Decimal(1)), FeeRule(10, Decimal(1)), ("dca", {"usd": "100"})
    )
    assert result.fills
    forged = RunResult(
        result.user_id, result.fills, result.balance_usd + 1, result.holdings, result.value_usd
    )
    with pytest.raises(InvariantViolation):
        check_result(state, forged)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("moon", {}, "unknown strategy"),
        ("random", {"max_trades": -1}, "max_trades"),
        ("dca", {"usd": 0.5}, "usd"),
        ("dca", {"assets": ["DOGE"]}, "unknown asset"),
        ("rebalance", {"weights": {"BTC": "0.8", "ETH": "0.5"}}, "add up"),
        ("momentum", {"lookback": 0}, "lookback"),
    ],
)
def test_bad_strategies_are_refused(name: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(UnknownStrategy, match=message):
        make_strategy(name, params)


def test_rebalance_moves_towards_its_targets() -> None:
    prices = dict.fromkeys(ASSETS, Decimal("100"))
    state = UserState(3, Decimal("10000"), dict.fromkeys(ASSETS, Decimal(0)), {})
    result = run(state, prices, FeeRule(10, Decimal(1)), ("rebalance", {"weights": {"BTC": "0.5"}}))
    btc_value = result.holdings["BTC"] * prices["BTC"]
    assert Decimal("4900") < btc_value <= Decimal("5000")
