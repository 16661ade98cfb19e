"""Strategies decide what a simulated user trades. They see the market, never choose it.

A strategy returns orders (intents); run accounting turns them into fills under the money
rules. Nothing here can target a profit, a win rate or a balance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal, NamedTuple

from engine.assets import ASSETS
from engine.errors import UnknownStrategy
from engine.money import CTX, ZERO
from engine.rng import Stream

Side = Literal["buy", "sell"]


class Order(NamedTuple):
    """Buy with up to `usd` (fee included) or sell `qty` of an asset."""

    asset: str
    side: Side
    usd: Decimal = ZERO
    qty: Decimal = ZERO


class MarketView(NamedTuple):
    """What a strategy may look at: prices now and, for momentum, a few ticks back."""

    prices: Mapping[str, Decimal]
    history: Callable[[str, int], Decimal]  # (asset, ticks back) -> price


class Wallet(NamedTuple):
    """The user's cash and the crypto they may sell (holding minus reservations)."""

    balance_usd: Decimal
    available: Mapping[str, Decimal]
    holdings: Mapping[str, Decimal]


class Strategy:
    """Base: `orders` turns a wallet, a market view and the run's random stream into orders."""

    name: str = ""
    lookback: int = 0  # ticks of history `orders` reads

    def orders(self, wallet: Wallet, market: MarketView, rng: Stream) -> Sequence[Order]:
        raise NotImplementedError


def _assets(params: Mapping[str, Any], default: Sequence[str]) -> tuple[str, ...]:
    raw = params.get("assets", default)
    if not isinstance(raw, list | tuple) or not raw:
        raise UnknownStrategy("assets must be a non-empty list")
    out = []
    for item in raw:
        if not isinstance(item, str) or item.upper() not in ASSETS:
            raise UnknownStrategy(f"unknown asset {item!r} in assets")
        out.append(item.upper())
    return tuple(out)


def _decimal(
    params: Mapping[str, Any], name: str, default: str, lo: Decimal, hi: Decimal
) -> Decimal:
    raw = params.get(name, default)
    if isinstance(raw, bool | float) or not isinstance(raw, int | str):
        raise UnknownStrategy(f"{name} must be a number written as an integer or a string")
    try:
        value = Decimal(str(raw))
    except ArithmeticError:
        raise UnknownStrategy(f"{name} is not a number: {raw!r}") from None
    if not value.is_finite() or not lo <= value <= hi:
        raise UnknownStrategy(f"{name} must be between {lo} and {hi}")
    return value


def _int(params: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name, default)
    if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
        raise UnknownStrategy(f"{name} must be an integer between {lo} and {hi}")
    return raw


class RandomStrategy(Strategy):
    """0..max_trades trades per run: random asset and side, a random fraction of what is available."""

    name = "random"

    def __init__(self, params: Mapping[str, Any], max_trades: int) -> None:
        self.max_trades = _int(params, "max_trades", max_trades, 0, 50)
        self.assets = _assets(params, ASSETS)
        self.max_fraction = _decimal(
            params, "max_fraction", "0.25", Decimal("0.000001"), Decimal(1)
        )

    def orders(self, wallet: Wallet, market: MarketView, rng: Stream) -> Sequence[Order]:
        count = rng.below(self.max_trades + 1)
        out = []
        for _ in range(count):
            asset = self.assets[rng.below(len(self.assets))]
            side: Side = "buy" if rng.below(2) == 0 else "sell"
            fraction = CTX.multiply(rng.fraction(), self.max_fraction)
            if side == "buy":
                out.append(Order(asset, "buy", usd=CTX.multiply(wallet.balance_usd, fraction)))
            else:
                out.append(
                    Order(
                        asset, "sell", qty=CTX.multiply(wallet.available.get(asset, ZERO), fraction)
                    )
                )
        return out


class DcaStrategy(Strategy):
    """Dollar-cost averaging: a fixed USD amount split over chosen assets every run."""

    name = "dca"

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.usd = _decimal(params, "usd", "100", Decimal("0.01"), Decimal("1000000000"))
        self.assets = _assets(params, ("BTC", "ETH"))

    def orders(self, wallet: Wallet, market: MarketView, rng: Stream) -> Sequence[Order]:
        each = CTX.divide(self.usd, Decimal(len(self.assets)))
        return [Order(a, "buy", usd=each) for a in self.assets]


class RebalanceStrategy(Strategy):
    """Trades back to target weights of equity when an asset drifts outside the band."""

    name = "rebalance"

    def __init__(self, params: Mapping[str, Any]) -> None:
        raw = params.get("weights", {"BTC": "0.5", "ETH": "0.3", "USDC": "0.1"})
        if not isinstance(raw, dict) or not raw:
            raise UnknownStrategy("weights must be an object of ASSET: weight")
        self.weights = {
            a: _decimal(raw, a, "0", ZERO, Decimal(1)) for a in _assets({"assets": list(raw)}, ())
        }
        if sum(self.weights.values()) > 1:
            raise UnknownStrategy("weights must add up to at most 1")
        self.band = _decimal(params, "band", "0.05", ZERO, Decimal(1))

    def orders(self, wallet: Wallet, market: MarketView, rng: Stream) -> Sequence[Order]:
        prices = market.prices
        values = {a: CTX.multiply(wallet.holdings.get(a, ZERO), prices[a]) for a in ASSETS}
        equity = CTX.add(wallet.balance_usd, sum(values.values(), ZERO))
        if equity <= 0:
            return []
        sells, buys = [], []
        for asset, weight in self.weights.items():
            gap = CTX.subtract(CTX.multiply(weight, equity), values[asset])
            if abs(gap) <= CTX.multiply(self.band, equity):
                continue
            if gap < 0:
                sells.append(Order(asset, "sell", qty=CTX.divide(-gap, prices[asset])))
            else:
                buys.append(Order(asset, "buy", usd=gap))
        return sells + buys  # sell first so the buys can use the proceeds


class MomentumStrategy(Strategy):
    """Buys what rose over the last `lookback` ticks, sells what fell, by a fixed fraction."""

    name = "momentum"

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.lookback = _int(params, "lookback", 10, 1, 1440)
        self.threshold = _decimal(params, "threshold", "0.002", ZERO, Decimal(1))
        self.fraction = _decimal(params, "fraction", "0.1", Decimal("0.000001"), Decimal(1))
        self.assets = _assets(params, ("BTC", "ETH", "XRP", "ADA"))

    def orders(self, wallet: Wallet, market: MarketView, rng: Stream) -> Sequence[Order]:
        out = []
        for asset in self.assets:
            then = market.history(asset, self.lookback)
            change = CTX.divide(CTX.subtract(market.prices[asset], then), then)
            if change > self.threshold:
                out.append(Order(asset, "buy", usd=CTX.multiply(wallet.balance_usd, self.fraction)))
            elif change < -self.threshold:
                qty = CTX.multiply(wallet.available.get(asset, ZERO), self.fraction)
                out.append(Order(asset, "sell", qty=qty))
        return out


STRATEGIES: Mapping[str, str] = {
    "random": RandomStrategy.__doc__ or "",
    "rebalance": RebalanceStrategy.__doc__ or "",
    "dca": DcaStrategy.__doc__ or "",
    "momentum": MomentumStrategy.__doc__ or "",
}


def make_strategy(name: str, params: Mapping[str, Any], *, max_trades: int = 3) -> Strategy:
    """Build a strategy from its stored name and parameters; UnknownStrategy for anything else."""
    if not isinstance(params, Mapping):
        raise UnknownStrategy("strategy parameters must be an object")
    if name == "random":
        return RandomStrategy(params, max_trades)
    if name == "dca":
        return DcaStrategy(params)
    if name == "rebalance":
        return RebalanceStrategy(params)
    if name == "momentum":
        return MomentumStrategy(params)
    raise UnknownStrategy(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
