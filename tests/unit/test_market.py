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


def market(seed: int = 11, tick_s: int = 3600, model: int = 2) -> Market:
    return Market(MarketParams(seed=seed, tick_s=tick_s, epoch=EPOCH, model_version=model))


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
def test_model_1_has_the_stated_volatility_zero_log_drift_and_fat_tails(asset: str) -> None:
    m = market(model=1)
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


@pytest.mark.parametrize("asset", ["BTC", "ETH", "XRP", "ADA"])
def test_model_2_has_the_stated_volatility_and_a_log_drift_of_minus_half_sigma_squared(
    asset: str,
) -> None:
    m = market()
    n = 20_000  # hourly ticks: 2.3 years
    logs = [math.log(m.price(asset, t)) for t in range(n + 1)]
    returns = [b - a for a, b in itertools.pairwise(logs)]
    per_year = SECONDS_PER_YEAR / 3600
    sigma = float(DEFAULT_ASSET_PARAMS[asset].annual_vol) / math.sqrt(per_year)
    vol = statistics.pstdev(returns) / sigma
    assert abs(vol - 1) < 0.05, vol
    # The mean log return per tick is -σ²/2, within 4 standard errors.
    se = statistics.pstdev(returns) / math.sqrt(len(returns))
    assert abs(statistics.fmean(returns) + sigma * sigma / 2) < 4 * se


def test_a_market_change_prices_its_ticks_from_its_effective_tick_on() -> None:
    first = MarketParams(seed=11, tick_s=60, epoch=EPOCH)
    base = Market(first)
    anchor = {a: base.price(a, 5_000) for a in ("BTC", "ETH", "XRP", "ADA")}
    later = MarketParams(
        seed=99,
        tick_s=60,
        epoch=base.tick_time(5_000),
        assets={
            a: (p if a not in anchor else type(p)(anchor[a], p.annual_vol * 2))
            for a, p in DEFAULT_ASSET_PARAMS.items()
        },
    )
    changed = Market(first, [(5_000, later)])
    # Every tick before the change is priced exactly as before; the change starts where the old
    # definition left off, then follows its own seed.
    assert all(changed.prices_at(t) == base.prices_at(t) for t in range(4_900, 5_000))
    assert changed.price("BTC", 5_000) == base.price("BTC", 5_000)
    assert changed.price("BTC", 5_100) != base.price("BTC", 5_100)
    assert changed.seed_at(changed.tick_time(4_999)) == 11
    assert changed.seed_at(changed.tick_time(5_000)) == 99
