"""Text from outside is data, never control.

Names, emails, addresses, reasons, tx hashes and CSV fields come from people the engine does not
trust: a sign-up form fills `full_name`, an operator pastes an address. Two things go wrong with
such text when it is taken as it comes:

- **Control characters** act on whoever reads the text later: `ESC [2J` clears the terminal of the
  operator who runs `users list`, `ESC ] 0;...BEL` retitles it, a newline breaks a table into a
  row the author chose, a right-to-left override (U+202E) shows `gpj.exe` as `exe.jpg`. So they
  are refused on the way in (`check_text`) and escaped on the way out (`printable`) for rows the
  engine did not write itself (an adopted database holds text nobody checked).
- **Numbers in other scripts** parse: Python's `int` and `Decimal` read `١٠` (Arabic-Indic digits)
  as 10 and `1_000` as 1000, and `int("²")` raises. An amount is only ever ASCII digits
  (`ascii_int`, `ascii_decimal`), so what an operator reads is what the engine stores.

Lengths are bounded (`LIMITS`, in characters) so that one field cannot fill a page, a log line or
a column of the audit log.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation

from engine.errors import Rejected

# Longest accepted value per kind of field, in characters.
LIMITS: dict[str, int] = {
    "email": 254,  # RFC 5321's path limit
    "name": 200,
    "reason": 500,
    "address": 128,  # the longest chain address formats are under 100
    "tx_hash": 128,
    "strategy": 64,
    "role": 63,  # Postgres' identifier limit (NAMEDATALEN - 1)
    "csv_field": 64,
}

# Format characters that reorder or hide text (bidirectional controls, the "Trojan source" set).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Categories that never belong in a stored field: C0/C1 controls and DEL, surrogates (not
# encodable as UTF-8), line and paragraph separators (a line break by another name).
_CONTROL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})

_INT = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


class TextRefused(Rejected):
    """A value from outside that the engine will not store (control characters, too long, not
    an ASCII number): a refusal like any other Rejected (simctl exits 1)."""


def is_control(char: str) -> bool:
    """True for a character that acts on a terminal or a layout instead of showing itself."""
    return char in _BIDI or unicodedata.category(char) in _CONTROL_CATEGORIES


def check_text(value: str, what: str, kind: str | None = None, *, empty: bool = False) -> str:
    """`value` unchanged if it may be stored as `what`: no control character, at most
    LIMITS[kind] characters (kind defaults to `what`), and not empty unless `empty`."""
    limit = LIMITS[kind or what]
    if not value and not empty:
        raise TextRefused(f"{what} must not be empty")
    if len(value) > limit:
        raise TextRefused(f"{what} is {len(value)} characters long, at most {limit} are accepted")
    for index, char in enumerate(value):
        if is_control(char):
            raise TextRefused(
                f"{what} holds a control character ({_codepoint(char)} at position {index + 1})"
            )
    return value


def printable(value: object) -> str:
    """`value` as text safe to print on a terminal or in a table: each control character shown
    as its escape (`\\x1b`, `\\n`, `\\u202e`), everything else as it is."""
    text = str(value)
    if not any(is_control(c) for c in text):
        return text
    return "".join(_escape(c) if is_control(c) else c for c in text)


def ascii_int(text: str, what: str, low: int | None = None, high: int | None = None) -> int:
    """An integer written in ASCII digits (an optional sign, no underscores, no spaces inside),
    within [low, high] when given."""
    stripped = text.strip()
    if len(stripped) > 40 or not _INT.fullmatch(stripped):
        raise TextRefused(f"{what} must be a whole number in ASCII digits, got {printable(text)!r}")
    value = int(stripped)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{'' if low is None else low}..{'' if high is None else high}"
        raise TextRefused(f"{what} must be in {bounds}, got {value}")
    return value


def ascii_decimal(text: str, what: str) -> Decimal:
    """A decimal number written in ASCII digits with an optional point and sign (no exponent,
    no underscores, no other scripts' digits)."""
    stripped = text.strip()
    if len(stripped) > 60 or not _DECIMAL.fullmatch(stripped):
        raise TextRefused(f"{what} must be a number in ASCII digits, got {printable(text)!r}")
    try:
        return Decimal(stripped)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid literals
        raise TextRefused(f"{what} must be a number, got {printable(text)!r}") from None


def _codepoint(char: str) -> str:
    return f"U+{ord(char):04X}"


def _escape(char: str) -> str:
    code = ord(char)
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if char in named:
        return named[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"
