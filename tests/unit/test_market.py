"""The market model: a pure function of (seed, asset, tick), with the stated statistics."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from engine.market import DEFAULT_ASSET_PARAMS, SECONDS_PER_YEAR, Market, MarketParams

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def market(seed: int = 11, tick_s: int = 3600) -> Market:
    return Market(MarketParams(seed=seed, tick_s=tick_s, epoch=EPOCH))


def test_prices_do_not_depend_on_evaluation_order() -> None:
    ticks = list(range(-300, 3000, 7))
    forward = {t: market().prices_at(t) for t in ticks}
    backward = {t: market().prices_at(t) for t in reversed(ticks)}
    shuffled_ticks = ticks[:]
    random.Random(3).shuffle(shuffled_ticks)
    shuffled = {t: market().prices_at(t) for t in shuffled_ticks}
    assert forward == backward == shuffled


def test_start_prices_at_the_epoch_and_seed_matters() -> None:
    m = market()
    assert m.price("BTC", 0) == Decimal("65000")
    assert market(seed=1).price("BTC", 500) != market(seed=2).price("BTC", 500)
    assert all(
        p > 0 and p == p.quantize(Decimal("0.00000001")) for p in m.prices_at(12345).values()
    )


def test_tick_of_and_tick_time() -> None:
    m = market(tick_s=60)
    at = EPOCH + timedelta(minutes=90, seconds=59)
    assert m.tick_of(at) == 90 and m.tick_time(90) == EPOCH + timedelta(minutes=90)
    assert m.tick_of(EPOCH - timedelta(seconds=1)) == -1


@pytest.mark.parametrize("asset", ["BTC", "ETH", "XRP", "ADA"])
def test_volatile_assets_have_the_stated_volatility_zero_drift_and_fat_tails(asset: str) -> None:
    m = market()
    n = 20_000  # hourly ticks: 2.3 years
    logs = [math.log(m.price(asset, t)) for t in range(n + 1)]
    returns = [b - a for a, b in itertools.pairwise(logs)]
    per_year = SECONDS_PER_YEAR / 3600
    vol = statistics.pstdev(returns) * math.sqrt(per_year)
    target = float(DEFAULT_ASSET_PARAMS[asset].annual_vol)
    assert abs(vol - target) / target < 0.10, vol
    mean = statistics.fmean(returns)
    # Zero drift: the mean return lies within 4 standard errors of zero.
    assert abs(mean) < 4 * statistics.pstdev(returns) / math.sqrt(len(returns))
    m2 = statistics.fmean([r * r for r in returns])
    m4 = statistics.fmean([r**4 for r in returns])
    assert m4 / (m2 * m2) - 3 > 0  # excess kurtosis


@pytest.mark.parametrize("asset", ["USDT", "USDC"])
def test_stablecoins_stay_near_the_peg_outside_depegs(asset: str) -> None:
    m = market(tick_s=60)
    seen_depeg = False
    for t in range(0, 2_000_000, 97):
        price = m.price(asset, t)
        if m.depeg_drop(asset, t) > 0:
            seen_depeg = True
            assert price > Decimal("0.75")
        else:
            assert abs(price - 1) < Decimal("0.01"), (t, price)
    assert seen_depeg  # rare, but a few years of minutes contain some
