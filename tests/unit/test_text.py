"""Text from outside is data: control characters refused and escaped, lengths bounded, numbers
only in ASCII digits."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.text import (
    LIMITS,
    TextRefused,
    ascii_decimal,
    ascii_int,
    check_text,
    is_control,
    printable,
)


@pytest.mark.parametrize(
    "value",
    [
        "evil\033[2J@x.com",  # clears the screen
        "Mallory\033]0;owned\007",  # retitles the terminal
        "two\nlines",
        "tab\there",
        "del\x7f",
        "c1\x9b31m",  # the 8-bit CSI
        "gpj\u202eexe.txt",  # right-to-left override
        "line\u2028separator",
    ],
)
def test_control_characters_are_refused_naming_the_position(value: str) -> None:
    with pytest.raises(TextRefused, match=r"control character \(U\+[0-9A-F]{4} at position \d+\)"):
        check_text(value, "name")


def test_ordinary_text_in_any_script_is_kept_as_it_is() -> None:
    for value in ("Zoë Ødegaard", "李小龍", "Ахмед", "O'Brien-Smith", "👩\u200d💻 dev"):
        assert check_text(value, "name") == value


def test_lengths_are_bounded_per_kind() -> None:
    assert check_text("a" * LIMITS["name"], "name")
    with pytest.raises(TextRefused, match="120000 characters long, at most 200"):
        check_text("a" * 120_000, "name")
    with pytest.raises(TextRefused, match="at most 500"):
        check_text("r" * 501, "reason")
    with pytest.raises(TextRefused, match="must not be empty"):
        check_text("", "address")
    assert check_text("", "reason", empty=True) == ""


def test_printable_escapes_what_would_act_on_a_terminal() -> None:
    assert printable("evil\033[2J@x.com") == "evil\\x1b[2J@x.com"
    assert printable("a\nb") == "a\\nb"
    assert printable("gpj\u202eexe") == "gpj\\u202eexe"
    assert printable("Zoë") == "Zoë"
    assert printable(42) == "42"


@given(st.text())
def test_printable_output_never_holds_a_control_character(value: str) -> None:
    assert not any(is_control(c) for c in printable(value))


@pytest.mark.parametrize("text", ["١", "١٠", "²", "1_000", "1e3", "0x10", "", "1 2", "+", "٧٠٠٠"])
def test_integers_are_ascii_digits_only(text: str) -> None:
    with pytest.raises(TextRefused, match="ASCII digits"):
        ascii_int(text, "user id")


def test_integers_in_ascii_parse_and_keep_their_bounds() -> None:
    assert ascii_int(" 42 ", "user id") == 42
    assert ascii_int("-3", "delta") == -3
    with pytest.raises(TextRefused, match=r"must be in 1\.\., got 0"):
        ascii_int("0", "user id", low=1)
    with pytest.raises(TextRefused, match=r"must be in 1\.\.9, got 10"):
        ascii_int("10", "count", 1, 9)


@pytest.mark.parametrize(
    "text", ["١٠", "٧٠٠٠", "1_000", "1e3", "NaN", "Infinity", "", "1.2.3", "."]
)
def test_decimals_are_ascii_digits_only(text: str) -> None:
    with pytest.raises(TextRefused, match="ASCII digits"):
        ascii_decimal(text, "amount")


def test_decimals_in_ascii_parse_exactly() -> None:
    assert ascii_decimal("10", "amount") == Decimal("10")
    assert ascii_decimal("-0.00000001", "amount") == Decimal("-0.00000001")
    assert ascii_decimal(".5", "amount") == Decimal("0.5")
    assert ascii_decimal("7000.", "price") == Decimal("7000")
