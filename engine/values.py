"""Operator input as the engine accepts it: amounts, emails, assets and intervals, checked
against what the ledger's columns can hold. Each refusal is a Rejected naming the value."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from engine.assets import check_asset
from engine.errors import Rejected

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
MAX_USD = Decimal("100000000000")  # numeric(20,8) holds < 1e12
MAX_INTERVAL_S = 2_147_483_647  # users.sim_interval_s is an integer (int32)


def check_interval(interval_s: int) -> None:
    """Rejected unless 1 <= interval_s <= MAX_INTERVAL_S (what the column can hold)."""
    if not 1 <= interval_s <= MAX_INTERVAL_S:
        raise Rejected(f"interval must be 1..{MAX_INTERVAL_S} seconds, got {interval_s}")


def parse_amount(text: str, what: str = "amount", *, signed: bool = False) -> Decimal:
    """A money amount from text: finite, at most 8 decimals, positive unless `signed`."""
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        raise Rejected(f"{what} must be a number, got {text!r}") from None
    if not value.is_finite():
        raise Rejected(f"{what} must be a finite number, got {text!r}")
    if abs(value) >= MAX_USD or value != value.quantize(Decimal("0.00000001")):
        raise Rejected(f"{what} must have at most 8 decimals and be below {MAX_USD}")
    if value == 0 or (value < 0 and not signed):
        raise Rejected(f"{what} must be {'non-zero' if signed else 'positive'}, got {text}")
    return value


def parse_email(text: str) -> str:
    """An email as stored: trimmed, lower-case, at most 254 characters."""
    email = text.strip().lower()
    if len(email) > 254 or not EMAIL.match(email):
        raise Rejected(f"not a valid email address: {text!r}")
    return email


def parse_asset(text: str) -> str:
    """An asset's canonical name (`btc` is BTC)."""
    try:
        return check_asset(text)
    except ValueError as exc:
        raise Rejected(str(exc)) from None
