"""How simctl writes numbers and times for people: plain decimals (never `0E-8`), UTC times."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from engine.text import printable

CENT = Decimal("0.01")


def plain(value: Decimal) -> str:
    """A Decimal as a plain decimal with its stored scale: `0.00000000`, `0.00500000`, `12`."""
    text = format(value, "f")
    return "0" + text[2:] if text.startswith("-0") and not value else text


def usd(value: Decimal, signed: bool = False) -> str:
    """USD for a reader: cents and thousands separators, `+` shown when `signed`."""
    cents = value.quantize(CENT)
    if not cents:
        cents = abs(cents)  # never "-0.00"
    return format(cents, "+,.2f" if signed else ",.2f").replace("-", "\u2212") + " USD"


def percent(ratio: Decimal) -> str:
    """A ratio (0.0123) as a signed percentage (+1.23 %)."""
    pct = (ratio * 100).quantize(CENT)
    if not pct:
        pct = abs(pct)
    return format(pct, "+.2f").replace("-", "\u2212") + " %"


def utc(at: datetime) -> str:
    """A time in UTC to the minute (seconds when they are not zero)."""
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S" if at.second else "%Y-%m-%d %H:%M")


def span(delta: timedelta) -> str:
    """A duration in its two largest units: `3 d 4 h`, `45 min`, `0 min`."""
    seconds = int(delta.total_seconds())
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
    return " ".join(parts[:2]) or "0 min"


def table_lines(rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    """Rows (the first is the header) as aligned text columns; `right` columns right-aligned."""
    # Cells hold text the engine did not write (names, addresses): escaped, one line each.
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    aligned = set(right)
    return [
        "  ".join(
            cell.rjust(w) if i in aligned else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def print_table(rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> None:
    """Print a header row and the rows under it to stdout, aligned."""
    for line in table_lines(rows, right):
        sys.stdout.write(line + "\n")
