"""Decimal money helpers implementing the contract's rounding. Floats never touch money."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal

EIGHT_DP = Decimal("0.00000001")
ZERO = Decimal(0)
BPS = Decimal(10_000)

# Enough digits for numeric(20,8) × numeric(20,8) products without any rounding before ours.
CTX = Context(prec=50)


def qty_down(value: Decimal) -> Decimal:
    """A crypto quantity: rounded down to 8 decimals."""
    return value.quantize(EIGHT_DP, rounding=ROUND_FLOOR, context=CTX)


def fee_up(value: Decimal) -> Decimal:
    """A fee: rounded up to 8 decimals."""
    return value.quantize(EIGHT_DP, rounding=ROUND_CEILING, context=CTX)


def usd_up(value: Decimal) -> Decimal:
    """A USD amount the user pays: rounded up to 8 decimals (rounding never favours the user)."""
    return value.quantize(EIGHT_DP, rounding=ROUND_CEILING, context=CTX)


def usd_down(value: Decimal) -> Decimal:
    """A USD amount the user receives: rounded down to 8 decimals."""
    return value.quantize(EIGHT_DP, rounding=ROUND_FLOOR, context=CTX)


def usd_half_even(value: Decimal) -> Decimal:
    """A valuation (not a cash movement): rounded half-even to 8 decimals."""
    return value.quantize(EIGHT_DP, context=CTX)


def fee_for(total_usd: Decimal, fee_bps: int) -> Decimal:
    """The fee on a notional: fee_bps of it, rounded up to 8 decimals."""
    return fee_up(CTX.divide(CTX.multiply(total_usd, Decimal(fee_bps)), BPS))


def to_money(value: object) -> Decimal:
    """Parse a money value given as text, int or Decimal; refuse floats and non-finite values."""
    if isinstance(value, float | bool):
        raise TypeError("money must be a Decimal, an int or a string, never a float")
    dec = value if isinstance(value, Decimal) else Decimal(str(value))
    if not dec.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return dec
