"""The shared, seeded market model: price(asset, tick) is a pure function of (definition, asset,
tick), where the definition is what the database stores (seed, tick length, epoch, start prices,
volatilities, model version), in force from a given tick.

Volatile assets follow a log-Brownian path built as a Brownian bridge on a dyadic tree: the value
at any tick is reached from the root in O(log n) steps, each driven by a counter-based draw keyed
by (seed, asset, side, point), so no history is replayed and every worker on every machine agrees.

Model 2 (the current one) is a martingale: standard normal innovations and a log drift of −σ²/2
per unit time, so the expected price at any later tick equals today's (geometric Brownian motion,
exactly); stablecoins are centred on 1.00 (their depeg dips are offset by their expected depth).
Model 1 (databases created before the market was stored keep it) is driftless in log price with
Student-t (ν = 4) innovations: its expected price grows by exp(σ²t/2).

Only IEEE-exact float operations (+ − × ÷ √) feed the path; the one logarithm (model 2's normal
draw) and the final exponential are taken in Decimal, whose results are correctly rounded, so
prices agree bit for bit.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal

from engine.assets import ASSETS
from engine.rng import key_bytes, open_unit, words

MODEL_VERSIONS = (1, 2)
CURRENT_MODEL = 2
LEVELS = 40  # each side of the epoch spans 2**40 ticks (2 million years of minutes)
SPAN = 2**LEVELS
SECONDS_PER_YEAR = 365 * 86_400
MIN_PRICE = Decimal("0.00000001")
_EIGHT_DP = Decimal("0.00000001")
_EXP_CTX = Context(prec=34)
_T4_SCALE = 1.0 / math.sqrt(2.0)  # a Student-t with ν = 4 has variance 2
_LN_CTX = Context(prec=20)

# Stablecoin model: AR(1)-like weights over the last OU_TERMS ticks of bounded noise.
OU_PHI = 0.85
OU_TERMS = 40
OU_SIGMA = 0.00026  # stationary std ≈ 0.0005
DEPEG_PROB_PER_DAY = 1 / 500
DEPEG_DEPTH = 0.13  # USDC went to 0.87
DEPEG_DROP_S = 3_600
DEPEG_RECOVER_S = 48 * 3_600
_CACHE_LIMIT = 500_000
DEFAULT_TICK_S = 60
DEFAULT_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class AssetParams:
    """Start price at the epoch and annualised volatility (ignored for stablecoins)."""

    start_price_usd: Decimal
    annual_vol: Decimal
    stable: bool = False


DEFAULT_ASSET_PARAMS: Mapping[str, AssetParams] = {
    "BTC": AssetParams(Decimal("65000"), Decimal("0.65")),
    "ETH": AssetParams(Decimal("3200"), Decimal("0.85")),
    "USDT": AssetParams(Decimal("1"), Decimal("0"), stable=True),
    "USDC": AssetParams(Decimal("1"), Decimal("0"), stable=True),
    "XRP": AssetParams(Decimal("0.55"), Decimal("0.80")),
    "ADA": AssetParams(Decimal("0.45"), Decimal("0.95")),
}


@dataclass(frozen=True, slots=True)
class MarketParams:
    """Everything the price of a tick depends on (one stored market definition)."""

    seed: int
    tick_s: int
    epoch: datetime
    assets: Mapping[str, AssetParams] = field(default_factory=lambda: dict(DEFAULT_ASSET_PARAMS))
    model_version: int = CURRENT_MODEL

    def __post_init__(self) -> None:
        if self.model_version not in MODEL_VERSIONS:
            raise ValueError(f"unknown market model version {self.model_version}")


def _polar_point(key: bytes, counter: int) -> tuple[float, float]:
    """The first point (u, s = u² + v²) strictly inside the unit disc drawn from the keyed
    stream: what both polar methods transform (exact float operations only)."""
    attempt = 0
    while True:
        w = words(key, (counter << 6) | attempt)
        for i in range(0, 8, 2):
            u = 2.0 * open_unit(w[i]) - 1.0
            v = 2.0 * open_unit(w[i + 1]) - 1.0
            s = u * u + v * v
            if 0.0 < s < 1.0:
                return u, s
        attempt += 1  # all four pairs rejected: about one draw in 470


def _t4(key: bytes, counter: int) -> float:
    """A unit-variance Student-t (ν = 4) draw by Bailey's polar method (only exact float ops)."""
    u, s = _polar_point(key, counter)
    return u * math.sqrt(4.0 * (1.0 / math.sqrt(s) - 1.0) / s) * _T4_SCALE


def _normal(key: bytes, counter: int) -> float:
    """A standard normal draw by Marsaglia's polar method; its logarithm is taken in Decimal
    (correctly rounded), every other step is an exact float operation."""
    u, s = _polar_point(key, counter)
    ln_s = float(_LN_CTX.ln(Decimal(s)))
    return u * math.sqrt(-2.0 * ln_s / s)


def expected_depeg_drop(tick_s: int) -> float:
    """The mean of `depeg_drop` at a tick: each tick starts a depeg with probability
    p / ticks-per-day, of mean depth DEPEG_DEPTH, and a depeg's shape is the same wherever it
    starts, so the mean is that probability × depth × the shape summed over elapsed ticks."""
    day_ticks = max(1, 86_400 // tick_s)
    total, elapsed = 0.0, 0
    while elapsed < DEPEG_DROP_S + DEPEG_RECOVER_S:
        if elapsed < DEPEG_DROP_S:
            total += elapsed / DEPEG_DROP_S
        else:
            total += 1.0 - (elapsed - DEPEG_DROP_S) / DEPEG_RECOVER_S
        elapsed += tick_s
    return DEPEG_PROB_PER_DAY / day_ticks * DEPEG_DEPTH * total


class Market:
    """Prices under a stored market definition and its later changes.

    `params` is the first definition; each change (effective tick, definition) prices the ticks
    from its effective tick on. Every definition shares the tick length and tick boundaries."""

    def __init__(
        self,
        params: MarketParams,
        changes: Sequence[tuple[int, MarketParams]] = (),
        version: int = 0,
    ) -> None:
        self.params = params
        self.version = version  # the stored definition's version this was built from
        self._first = MarketModel(params)
        self._tick_us = params.tick_s * 1_000_000
        # (effective tick, model, the tick of that model's epoch on this market's clock)
        self._changes: list[tuple[int, MarketModel, int]] = []
        last = None
        for tick, later in changes:
            if later.tick_s != params.tick_s:
                raise ValueError("a market change cannot change the tick length")
            if last is not None and tick <= last:
                raise ValueError("market changes must be in effective-tick order")
            offset, rest = divmod(later.epoch - params.epoch, timedelta(seconds=params.tick_s))
            if rest:
                raise ValueError("a market change's epoch must be a tick boundary")
            self._changes.append((tick, MarketModel(later), offset))
            last = tick
        self._starts = [t for t, _, _ in self._changes]

    def tick_of(self, at: datetime) -> int:
        """The tick containing time `at` (ticks are tick_s long, tick 0 starts at the epoch)."""
        return ((at - self.params.epoch) // timedelta(microseconds=1)) // self._tick_us

    def tick_time(self, tick: int) -> datetime:
        """The start of a tick."""
        return self.params.epoch + timedelta(seconds=tick * self.params.tick_s)

    def model_at(self, tick: int) -> tuple[MarketModel, int]:
        """The definition in force at `tick`, and the tick of its epoch on this clock."""
        if not self._starts or tick < self._starts[0]:
            return self._first, 0
        _, model, offset = self._changes[bisect.bisect_right(self._starts, tick) - 1]
        return model, offset

    def seed_at(self, at: datetime) -> int:
        """The seed in force at time `at` (runs draw their random streams from it)."""
        if not self._starts:  # no change stored: every run's seed (the per-run hot path)
            return self.params.seed
        return self.model_at(self.tick_of(at))[0].params.seed

    def price(self, asset: str, tick: int) -> Decimal:
        """The price of `asset` at `tick` under the definition in force then."""
        model, offset = self.model_at(tick)
        return model.price(asset, tick - offset)

    def depeg_drop(self, asset: str, tick: int) -> float:
        """How far below its peg a stablecoin is pushed by depeg events at `tick`."""
        model, offset = self.model_at(tick)
        return model.depeg_drop(asset, tick - offset)

    def prices_at(self, tick: int) -> dict[str, Decimal]:
        """Every asset's price at one tick."""
        return {asset: self.price(asset, tick) for asset in ASSETS}


class MarketModel:
    """Prices from one definition. Results are memoised per instance; the cache never changes them."""

    def __init__(self, params: MarketParams) -> None:
        self.params = params
        self._v2 = params.model_version >= 2
        self._draw = _normal if self._v2 else _t4
        self._peg_offset = expected_depeg_drop(params.tick_s) if self._v2 else 0.0
        self._tick_us = params.tick_s * 1_000_000
        self._sigma: dict[str, float] = {}
        for asset, p in params.assets.items():
            per_tick = (p.annual_vol * p.annual_vol * params.tick_s / SECONDS_PER_YEAR).sqrt()
            self._sigma[asset] = float(per_tick)
        self._keys = {a: key_bytes(params.seed, "market", a) for a in ASSETS}
        self._points: dict[tuple[str, int], float] = {}
        self._prices: dict[tuple[str, int], Decimal] = {}
        self._noise: dict[tuple[str, int], float] = {}
        self._day_ticks = max(1, 86_400 // params.tick_s)

    # -- time ---------------------------------------------------------------------------------
    def tick_of(self, at: datetime) -> int:
        """The tick containing time `at` (ticks are tick_s long, tick 0 starts at the epoch)."""
        return ((at - self.params.epoch) // timedelta(microseconds=1)) // self._tick_us

    def tick_time(self, tick: int) -> datetime:
        """The start of a tick."""
        return self.params.epoch + timedelta(seconds=tick * self.params.tick_s)

    # -- prices -------------------------------------------------------------------------------
    def price(self, asset: str, tick: int) -> Decimal:
        """The model price of `asset` at `tick`, rounded to 8 decimals, never below 1e-8."""
        cache_key = (asset, tick)
        cached = self._prices.get(cache_key)
        if cached is not None:
            return cached
        params = self.params.assets[asset]
        if params.stable:
            level = 1.0 + self._ou(asset, tick) - self.depeg_drop(asset, tick) + self._peg_offset
            raw = _EXP_CTX.multiply(Decimal(level), params.start_price_usd)
        else:
            sigma = self._sigma[asset]
            move = sigma * self._brownian(asset, tick)
            if self._v2:
                move -= 0.5 * sigma * sigma * tick  # the martingale's drift: E[price] = start
            log_move = Decimal(move)
            raw = _EXP_CTX.multiply(params.start_price_usd, _EXP_CTX.exp(log_move))
        result = max(MIN_PRICE, raw.quantize(_EIGHT_DP, context=_EXP_CTX))
        if len(self._prices) > _CACHE_LIMIT:
            self._prices.clear()
        self._prices[cache_key] = result
        return result

    def prices_at(self, tick: int) -> dict[str, Decimal]:
        """Every asset's price at one tick."""
        return {asset: self.price(asset, tick) for asset in ASSETS}

    # -- the volatile path --------------------------------------------------------------------
    def _brownian(self, asset: str, tick: int) -> float:
        """W(tick) of a standard Brownian motion with W(0) = 0, a separate tree on each side."""
        if tick == 0:
            return 0.0
        side = "f" if tick > 0 else "b"
        target = abs(tick)
        if target > SPAN:
            raise ValueError("tick outside the model's span")
        key = self._keys[asset] + side.encode()
        points = self._points
        if len(points) > _CACHE_LIMIT:
            points.clear()
        top = (asset + side, SPAN)
        w_hi = points.get(top)
        if w_hi is None:
            w_hi = math.sqrt(float(SPAN)) * self._draw(key, 0)
            points[top] = w_hi
        if target == SPAN:
            return w_hi
        lo, hi, w_lo = 0, SPAN, 0.0
        tag = asset + side
        while True:
            mid = (lo + hi) >> 1
            w_mid = points.get((tag, mid))
            if w_mid is None:
                half_std = math.sqrt(float(hi - lo)) * 0.5
                w_mid = (w_lo + w_hi) * 0.5 + half_std * self._draw(key, mid)
                points[(tag, mid)] = w_mid
            if mid == target:
                return w_mid
            if target < mid:
                hi, w_hi = mid, w_mid
            else:
                lo, w_lo = mid, w_mid

    # -- stablecoins --------------------------------------------------------------------------
    def _bounded_noise(self, asset: str, tick: int) -> float:
        cache_key = (asset, tick)
        value = self._noise.get(cache_key)
        if value is None:
            w = words(self._keys[asset] + b"n", tick)
            # Irwin-Hall of four uniforms, centred and scaled to unit variance: bounded by ±3.47.
            value = (
                open_unit(w[0]) + open_unit(w[1]) + open_unit(w[2]) + open_unit(w[3]) - 2.0
            ) * math.sqrt(3.0)
            if len(self._noise) > _CACHE_LIMIT:
                self._noise.clear()
            self._noise[cache_key] = value
        return value

    def _ou(self, asset: str, tick: int) -> float:
        total, weight = 0.0, 1.0
        for lag in range(OU_TERMS):
            total += weight * self._bounded_noise(asset, tick - lag)
            weight *= OU_PHI
        return OU_SIGMA * total

    def _depeg_event(self, asset: str, day: int) -> tuple[int, float] | None:
        """(start tick, depth) of the depeg starting on `day`, if any."""
        w = words(self._keys[asset] + b"d", day)
        if open_unit(w[0]) >= DEPEG_PROB_PER_DAY:
            return None
        start = day * self._day_ticks + int(open_unit(w[1]) * self._day_ticks)
        depth = DEPEG_DEPTH * (0.5 + open_unit(w[2]))
        return start, depth

    def depeg_drop(self, asset: str, tick: int) -> float:
        """How far below its peg a stablecoin is pushed by depeg events at `tick` (0 most days)."""
        tick_s = self.params.tick_s
        span_days = (DEPEG_DROP_S + DEPEG_RECOVER_S) // 86_400 + 2
        day = tick // self._day_ticks
        drop = 0.0
        for d in range(day - span_days, day + 1):
            event = self._depeg_event(asset, d)
            if event is None:
                continue
            start, depth = event
            elapsed = (tick - start) * tick_s
            if elapsed < 0:
                continue
            if elapsed < DEPEG_DROP_S:
                drop += depth * elapsed / DEPEG_DROP_S
            elif elapsed < DEPEG_DROP_S + DEPEG_RECOVER_S:
                drop += depth * (1.0 - (elapsed - DEPEG_DROP_S) / DEPEG_RECOVER_S)
        return drop
