"""Run accounting: a user's state, the slot's prices and a strategy in; fills and new state out.

Every money rule of the contract is checked here, and a violation raises InvariantViolation
rather than returning a result that would need to be trusted.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

from engine.assets import ASSETS
from engine.errors import InvalidUserState, InvariantViolation
from engine.money import BPS, CTX, ZERO, fee_for, qty_down, usd_down, usd_half_even, usd_up
from engine.rng import Stream, key_bytes
from engine.strategies import MarketView, Order, Strategy, Wallet

_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class FeeRule(NamedTuple):
    """Per-asset trading fee and minimum notional (from fee_config)."""

    fee_bps: int
    min_notional_usd: Decimal


class UserState(NamedTuple):
    """What a run starts from: cash, holdings and crypto reserved by open withdrawals."""

    user_id: int
    balance_usd: Decimal
    holdings: Mapping[str, Decimal]
    reserved: Mapping[str, Decimal]


class Fill(NamedTuple):
    """One simulated trade. `delta` is its signed ledger amount."""

    asset: str
    side: str
    amount: Decimal
    price_usd: Decimal
    total_usd: Decimal
    fee_usd: Decimal
    balance_before: Decimal
    balance_after: Decimal

    @property
    def delta(self) -> Decimal:
        return self.balance_after - self.balance_before


class RunResult(NamedTuple):
    """The fills of one run and the state they leave behind."""

    user_id: int
    fills: tuple[Fill, ...]
    balance_usd: Decimal
    holdings: Mapping[str, Decimal]
    value_usd: Decimal


def slot_to_us(slot: datetime) -> int:
    """A slot as Unix microseconds: small and exact (the form jobs carry and run keys use)."""
    return (slot - _UNIX_EPOCH) // _MICROSECOND


def slot_from_us(us: int) -> datetime:
    return _UNIX_EPOCH + us * _MICROSECOND


def run_stream(seed: int, user_id: int, slot: datetime) -> Stream:
    """The random stream of one run, keyed by (seed, user, slot) so a run is reproducible.

    The key is `key_bytes(seed, "run", user_id, slot_us)`, assembled from cached parts: the
    prefix is the same for every run and the slot part for every user of a slot.
    """
    return Stream(_run_prefix(seed) + key_bytes(user_id) + _slot_part(slot))


@functools.lru_cache(maxsize=16)
def _run_prefix(seed: int) -> bytes:
    return key_bytes(seed, "run")


@functools.lru_cache(maxsize=4096)
def _slot_part(slot: datetime) -> bytes:
    return key_bytes(slot_to_us(slot))


def mark_to_market(holdings: Mapping[str, Decimal], prices: Mapping[str, Decimal]) -> Decimal:
    """Holdings × price, summed exactly, then rounded half-even to 8 decimals."""
    total = ZERO
    for asset in ASSETS:
        qty = holdings.get(asset, ZERO)
        if qty:
            total = CTX.add(total, CTX.multiply(qty, prices[asset]))
    return usd_half_even(total)


def apply_run(
    state: UserState,
    prices: Mapping[str, Decimal],
    fees: Mapping[str, FeeRule],
    strategy: Strategy,
    stream: Stream,
    *,
    slippage_bps: int,
    market: MarketView | None = None,
) -> RunResult:
    """Execute a strategy's orders for one user at one slot under the money rules."""
    user_id, balance = state.user_id, state.balance_usd
    if balance < 0:
        raise InvalidUserState(f"user {user_id}: negative balance {balance}")
    # One pass: validate the starting state and build the run's working copies.
    get_held, get_reserved = state.holdings.get, state.reserved.get
    holdings: dict[str, Decimal] = {}
    reserved: dict[str, Decimal] = {}
    available: dict[str, Decimal] = {}
    for asset in ASSETS:
        held = get_held(asset, ZERO)
        if held < 0:
            raise InvalidUserState(f"user {user_id}: negative {asset} holding {held}")
        res = get_reserved(asset, ZERO)
        if res < 0:
            raise InvalidUserState(f"user {user_id}: negative {asset} reservation {res}")
        holdings[asset] = held
        reserved[asset] = res
        # A withdrawal may reserve more than is held (legacy rows written before simengine):
        # then none of that asset can be sold, and the user still trades the rest.
        available[asset] = held - res if res < held else ZERO
    view = market or MarketView(prices=prices, history=_no_history)
    wallet = Wallet(balance_usd=balance, available=available, holdings=holdings)
    slip = _slip(slippage_bps)
    fills: list[Fill] = []
    for order in strategy.orders(wallet, view, stream):
        fill = _execute(order, balance, holdings, reserved, prices, fees, slip)
        if fill is None:
            continue
        fills.append(fill)
        balance = fill.balance_after
        if fill.side == "buy":
            holdings[fill.asset] = CTX.add(holdings[fill.asset], fill.amount)
        else:
            holdings[fill.asset] = CTX.subtract(holdings[fill.asset], fill.amount)
    result = RunResult(
        user_id=state.user_id,
        fills=tuple(fills),
        balance_usd=balance,
        holdings=holdings,
        value_usd=mark_to_market(holdings, prices),
    )
    check_result(state, result)
    return result


@functools.lru_cache(maxsize=64)
def _slip(slippage_bps: int) -> Decimal:
    return CTX.divide(Decimal(slippage_bps), BPS)


def _no_history(asset: str, ticks_back: int) -> Decimal:
    raise InvariantViolation("this strategy needs price history and none was given")


def _execute(
    order: Order,
    balance: Decimal,
    holdings: Mapping[str, Decimal],
    reserved: Mapping[str, Decimal],
    prices: Mapping[str, Decimal],
    fees: Mapping[str, FeeRule],
    slip: Decimal,
) -> Fill | None:
    rule = fees[order.asset]
    market_price = prices[order.asset]
    if order.side == "buy":
        budget = min(order.usd, balance)
        if budget <= 0:
            return None
        price, gross = _buy_terms(market_price, slip, rule.fee_bps)
        qty = qty_down(CTX.divide(budget, gross))
        while qty > 0:
            total = usd_up(CTX.multiply(qty, price))
            fee = fee_for(total, rule.fee_bps)
            if total + fee <= balance:
                break
            qty -= Decimal("0.00000001")  # at most a step or two for rounding
        if qty <= 0:
            return None
        after = CTX.subtract(balance, CTX.add(total, fee))
    else:
        price = _sell_price(market_price, slip)
        qty = qty_down(min(order.qty, holdings[order.asset] - reserved[order.asset]))
        if qty <= 0 or price <= 0:
            return None
        total = usd_down(CTX.multiply(qty, price))
        fee = fee_for(total, rule.fee_bps)
        after = CTX.add(balance, CTX.subtract(total, fee))
    if total < rule.min_notional_usd or total <= 0 or price <= 0:
        return None
    return Fill(order.asset, order.side, qty, price, total, fee, balance, after)


# Users of a batch share a slot's prices, so the per-price terms of a fill are worth caching.
@functools.lru_cache(maxsize=4096)
def _buy_terms(market_price: Decimal, slip: Decimal, fee_bps: int) -> tuple[Decimal, Decimal]:
    """A buy's fill price (rounded up: slippage and rounding never favour the user) and its
    cost per unit including the fee."""
    price = usd_up(CTX.multiply(market_price, CTX.add(1, slip)))
    return price, CTX.multiply(price, CTX.add(1, CTX.divide(Decimal(fee_bps), BPS)))


@functools.lru_cache(maxsize=4096)
def _sell_price(market_price: Decimal, slip: Decimal) -> Decimal:
    """A sell's fill price, rounded down."""
    return usd_down(CTX.multiply(market_price, CTX.subtract(1, slip)))


def check_result(state: UserState, result: RunResult) -> None:
    """Prove the money rules on a run's result; InvariantViolation names the first one broken."""
    balance = state.balance_usd
    holdings = {a: state.holdings.get(a, ZERO) for a in ASSETS}
    for fill in result.fills:
        if fill.balance_before != balance:
            raise InvariantViolation("fills are not chained on the balance")
        if fill.amount <= 0 or fill.price_usd <= 0 or fill.fee_usd < 0:
            raise InvariantViolation(f"non-positive amount or price in {fill}")
        if fill.side == "buy":
            expected = -(fill.total_usd + fill.fee_usd)
            holdings[fill.asset] += fill.amount
        else:
            expected = fill.total_usd - fill.fee_usd
            holdings[fill.asset] -= fill.amount
            if holdings[fill.asset] < state.reserved.get(fill.asset, ZERO):
                raise InvariantViolation(f"user {state.user_id}: would sell reserved {fill.asset}")
        if fill.delta != expected:
            raise InvariantViolation(f"ledger amount {fill.delta} differs from trade {expected}")
        balance = fill.balance_after
        if balance < 0:
            raise InvariantViolation(f"user {state.user_id}: balance would go negative")
    if balance != result.balance_usd or holdings != dict(result.holdings):
        raise InvariantViolation(f"user {state.user_id}: result does not follow from its fills")
