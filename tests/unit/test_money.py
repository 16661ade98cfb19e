from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.money import fee_for, fee_up, qty_down, to_money, usd_down, usd_up

amounts = st.decimals(min_value=Decimal("0"), max_value=Decimal("1e11"), places=12, allow_nan=False)


def test_rounding_directions() -> None:
    assert qty_down(Decimal("0.123456789")) == Decimal("0.12345678")
    assert fee_up(Decimal("0.123456781")) == Decimal("0.12345679")
    assert usd_up(Decimal("1.000000001")) == Decimal("1.00000001")
    assert usd_down(Decimal("1.000000009")) == Decimal("1.00000000")
    assert fee_for(Decimal("100"), 10) == Decimal("0.10000000")
    assert fee_for(Decimal("0.00000001"), 10) == Decimal("0.00000001")  # never rounds a fee to 0


@given(amounts)
def test_quantities_never_round_up_and_fees_never_round_down(value: Decimal) -> None:
    assert qty_down(value) <= value < qty_down(value) + Decimal("0.00000001")
    assert fee_up(value) - Decimal("0.00000001") < value <= fee_up(value)


def test_floats_are_refused_as_money() -> None:
    with pytest.raises(TypeError):
        to_money(0.1)
    with pytest.raises(ValueError):
        to_money("NaN")
    assert to_money("12.5") == Decimal("12.5")
