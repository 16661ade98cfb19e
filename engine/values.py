"""Operator input as the engine accepts it: amounts, emails, assets and intervals, checked
against what the ledger's columns can hold. Each refusal is a Rejected naming the value."""

from __future__ import annotations

import re
from decimal import Decimal

from engine.assets import check_asset
from engine.errors import Rejected
from engine.text import ascii_decimal, check_text, printable

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
MAX_USD = Decimal("100000000000")  # numeric(20,8) holds < 1e12
MAX_INTERVAL_S = 2_147_483_647  # users.sim_interval_s is an integer (int32)


def check_interval(interval_s: int) -> None:
    """Rejected unless 1 <= interval_s <= MAX_INTERVAL_S (what the column can hold)."""
    if not 1 <= interval_s <= MAX_INTERVAL_S:
        raise Rejected(f"interval must be 1..{MAX_INTERVAL_S} seconds, got {interval_s}")


def parse_amount(text: str, what: str = "amount", *, signed: bool = False) -> Decimal:
    """A money amount from text: finite, at most 8 decimals, positive unless `signed`."""
    value = ascii_decimal(text, what)  # TextRefused (a Rejected) for 1e3, NaN, ١٠, 1_000
    if abs(value) >= MAX_USD or value != value.quantize(Decimal("0.00000001")):
        raise Rejected(f"{what} must have at most 8 decimals and be below {MAX_USD}")
    if value == 0 or (value < 0 and not signed):
        raise Rejected(
            f"{what} must be {'non-zero' if signed else 'positive'}, got {printable(text.strip())}"
        )
    return value


def parse_email(text: str) -> str:
    """An email as stored: trimmed, lower-case, at most 254 characters."""
    email = check_text(text.strip(), "email").lower()
    if not EMAIL.match(email):
        raise Rejected(f"not a valid email address: {text!r}")
    return email


def parse_user(text: str) -> int | str:
    """A USER argument: a user id (a positive whole number in ASCII digits) or an email (text
    without control characters, as long as an email may be). Anything without an `@` that looks
    like a number (a sign, other scripts' digits, `²`) is refused as an id, never looked up."""
    ref = text.strip()
    if "@" not in ref and (ref[:1] in ("+", "-") or any(c.isdigit() or c.isnumeric() for c in ref)):
        if not (ref.isascii() and ref.isdigit()) or int(ref) < 1:
            # repr escapes control and format characters
            raise Rejected(
                f"a user id must be a positive whole number in ASCII digits, got {ref!r}"
            )
        return int(ref)
    return check_text(ref, "user", "email")


def parse_text(text: str, what: str, kind: str) -> str:
    """Free text from outside (a name, a reason, an address): no control characters, at most
    LIMITS[kind] characters; empty refused."""
    return check_text(text.strip(), what, kind)


def parse_asset(text: str) -> str:
    """An asset's canonical name (`btc` is BTC)."""
    try:
        return check_asset(text)
    except ValueError as exc:
        raise Rejected(str(exc)) from None
