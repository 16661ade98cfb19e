"""How simctl writes numbers for people: plain decimals, never exponents."""

from __future__ import annotations

from decimal import Decimal

import pytest

from simctl.fmt import percent, plain, span, table_lines, usd


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("0E-8"), "0.00000000"),
        (Decimal("-0E-8"), "0.00000000"),
        (Decimal("0"), "0"),
        (Decimal("0.00500000"), "0.00500000"),
        (Decimal("1E+3"), "1000"),
        (Decimal("-12.5"), "-12.5"),
    ],
)
def test_plain_never_prints_an_exponent(value: Decimal, text: str) -> None:
    assert plain(value) == text


def test_usd_and_percent_for_a_reader() -> None:
    assert usd(Decimal("1234.567")) == "1,234.57 USD"
    assert usd(Decimal("-0.001"), signed=True) == "+0.00 USD"
    assert usd(Decimal("-5"), signed=True) == "\u22125.00 USD"
    assert percent(Decimal("0.0123")) == "+1.23 %"


def test_span_and_table() -> None:
    from datetime import timedelta

    assert span(timedelta(days=3, hours=4, minutes=5)) == "3 d 4 h"
    assert span(timedelta(0)) == "0 min"
    assert table_lines([("ID", "NAME"), ("7", "Zoë")], right=(0,)) == ["ID  NAME", " 7  Zoë"]
