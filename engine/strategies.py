"""Strategies decide what a simulated user trades. They see the market, never choose it.

A strategy returns orders (intents); run accounting turns them into fills under the money
rules. Nothing here can target a profit, a win rate or a balance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

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


MAX_PARAMS_BYTES = 2048  # a strategy's parameters as JSON: a few names and numbers, never more


def _decimal_text(value: object) -> Decimal:
    if isinstance(value, bool | float) or not isinstance(value, int | str | Decimal):
        raise ValueError("must be a number written as an integer or a string")
    try:
        number = Decimal(str(value))
    except ArithmeticError:
        raise ValueError(f"is not a number: {value!r}") from None
    if not number.is_finite():
        raise ValueError("must be a finite number")
    return number


def _asset_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ValueError("must be a non-empty list of assets")
    out = []
    for item in value:
        if not isinstance(item, str) or item.upper() not in ASSETS:
            raise ValueError(f"unknown asset {item!r}")
        out.append(item.upper())
    return tuple(out)


def _weights(value: object) -> dict[str, Decimal]:
    if not isinstance(value, dict) or not value:
        raise ValueError("must be an object of ASSET: weight")
    out = {}
    for asset, weight in value.items():
        name = _asset_list([asset])[0]
        number = _decimal_text(weight)
        if not ZERO <= number <= 1:
            raise ValueError(f"weight of {name} must be between 0 and 1")
        out[name] = number
    if sum(out.values()) > 1:
        raise ValueError("weights must add up to at most 1")
    return out


Number = Annotated[Decimal, BeforeValidator(_decimal_text)]
Assets = Annotated[tuple[str, ...], BeforeValidator(_asset_list)]


class StrategyParams(BaseModel):
    """A strategy's parameters: every key known and bounded; anything else is refused (no
    parameter can be a knob for win rate, target profit or a boost)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RandomParams(StrategyParams):
    max_trades: Annotated[int | None, Field(strict=True, ge=0, le=50)] = None
    assets: Assets = ASSETS
    max_fraction: Annotated[Number, Field(ge=Decimal("0.000001"), le=1)] = Decimal("0.25")


class DcaParams(StrategyParams):
    usd: Annotated[Number, Field(ge=Decimal("0.01"), le=Decimal("1000000000"))] = Decimal(100)
    assets: Assets = ("BTC", "ETH")


class RebalanceParams(StrategyParams):
    weights: Annotated[dict[str, Decimal], BeforeValidator(_weights)] = {
        "BTC": Decimal("0.5"),
        "ETH": Decimal("0.3"),
        "USDC": Decimal("0.1"),
    }
    band: Annotated[Number, Field(ge=0, le=1)] = Decimal("0.05")


class MomentumParams(StrategyParams):
    lookback: Annotated[int, Field(strict=True, ge=1, le=1440)] = 10
    threshold: Annotated[Number, Field(ge=0, le=1)] = Decimal("0.002")
    fraction: Annotated[Number, Field(ge=Decimal("0.000001"), le=1)] = Decimal("0.1")
    assets: Assets = ("BTC", "ETH", "XRP", "ADA")


_P = TypeVar("_P", bound=StrategyParams)


def parse_params(model: type[_P], strategy: str, params: Mapping[str, Any]) -> _P:
    """Validate parameters; UnknownStrategy naming the first key at fault."""
    try:
        size = len(json.dumps(params, default=str))
    except (TypeError, ValueError):
        raise UnknownStrategy(f"{strategy} parameters are not JSON") from None
    if size > MAX_PARAMS_BYTES:
        raise UnknownStrategy(
            f"{strategy} parameters are {size} bytes of JSON; at most {MAX_PARAMS_BYTES}"
        )
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "parameters"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields)
            raise UnknownStrategy(
                f"{strategy} parameter {key}: unknown parameter (allowed: {allowed})"
            ) from None
        message = err["msg"].removeprefix("Value error, ")
        raise UnknownStrategy(f"{strategy} parameter {key}: {message}") from None


class RandomStrategy(Strategy):
    """0..max_trades trades per run: random asset and side, a random fraction of what is available."""

    name = "random"

    def __init__(self, params: Mapping[str, Any], max_trades: int) -> None:
        p = parse_params(RandomParams, self.name, params)
        self.max_trades = max_trades if p.max_trades is None else p.max_trades
        self.assets = p.assets
        self.max_fraction = p.max_fraction

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
        p = parse_params(DcaParams, self.name, params)
        self.usd = p.usd
        self.assets = p.assets

    def orders(self, wallet: Wallet, market: MarketView, rng: Stream) -> Sequence[Order]:
        each = CTX.divide(self.usd, Decimal(len(self.assets)))
        return [Order(a, "buy", usd=each) for a in self.assets]


class RebalanceStrategy(Strategy):
    """Trades back to target weights of equity when an asset drifts outside the band; assets
    the weights do not name are sold."""

    name = "rebalance"

    def __init__(self, params: Mapping[str, Any]) -> None:
        p = parse_params(RebalanceParams, self.name, params)
        self.weights = p.weights
        self.band = p.band

    def orders(self, wallet: Wallet, market: MarketView, rng: Stream) -> Sequence[Order]:
        prices = market.prices
        values = {a: CTX.multiply(wallet.holdings.get(a, ZERO), prices[a]) for a in ASSETS}
        equity = CTX.add(wallet.balance_usd, sum(values.values(), ZERO))
        if equity <= 0:
            return []
        sells, buys = [], []
        # Every asset, those outside the weights at a target of 0: a holding the weights do not
        # name is sold (else a portfolio without cash in such an asset would never rebalance).
        for asset in ASSETS:
            weight = self.weights.get(asset, ZERO)
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
        p = parse_params(MomentumParams, self.name, params)
        self.lookback = p.lookback
        self.threshold = p.threshold
        self.fraction = p.fraction
        self.assets = p.assets

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
