"""Operator input and the withdrawal states, checked by the pure core."""

from __future__ import annotations

from decimal import Decimal

import pytest

from engine.errors import Rejected
from engine.values import check_interval, parse_amount, parse_asset, parse_email, parse_user
from engine.withdrawals import next_status


def test_amounts() -> None:
    assert parse_amount(" 12.5 ") == Decimal("12.5")
    assert parse_amount("-3", signed=True) == Decimal(-3)
    for bad in ("x", "NaN", "0", "-1", "0.000000001", "100000000000"):
        with pytest.raises(Rejected):
            parse_amount(bad)


def test_emails_assets_intervals() -> None:
    assert parse_email(" Ana@Example.com ") == "ana@example.com"
    assert parse_asset("btc") == "BTC"
    with pytest.raises(Rejected, match="not a valid email"):
        parse_email("ana")
    with pytest.raises(Rejected, match="unknown asset"):
        parse_asset("DOGE")
    with pytest.raises(Rejected, match="interval"):
        check_interval(2**31)


def test_withdrawal_steps() -> None:
    assert next_status(1, "pending", "process") == "processing"
    assert next_status(1, "processing", "complete") == "completed"
    assert next_status(1, "pending", "fail") == "failed"
    with pytest.raises(Rejected, match="withdrawal 7 is completed: cannot fail"):
        next_status(7, "completed", "fail")


def test_a_user_is_an_ascii_id_or_an_email() -> None:
    assert parse_user(" 42 ") == 42
    assert parse_user("Ana@Example.com") == "Ana@Example.com"  # resolve_user finds its case
    for bad in ("-1", "0", "+7", "١", "²", "１０"):
        with pytest.raises(Rejected, match="positive whole number in ASCII digits"):
            parse_user(bad)
    with pytest.raises(Rejected, match="control character"):
        parse_user("evil\x1b[2J@x.com")


def test_amounts_are_ascii_digits() -> None:
    for bad in ("١٠", "1_000", "１０", "1e3", "Infinity"):
        with pytest.raises(Rejected, match="ASCII"):
            parse_amount(bad)
