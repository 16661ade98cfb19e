"""Which price a slot gets: imported history where it covers the slot, else the model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from engine.assets import ASSETS
from engine.market import Market


@dataclass(frozen=True, slots=True)
class ImportSpan:
    """The first and last imported tick of an asset: imports price every time inside it."""

    asset: str
    first_at: datetime
    last_at: datetime

    def covers(self, at: datetime) -> bool:
        return self.first_at <= at <= self.last_at


class PriceBook:
    """Prices for one batch: ask `needs_import` first, then `price` with what was imported."""

    def __init__(self, market: Market, spans: Iterable[ImportSpan]) -> None:
        self.market = market
        self.spans = {s.asset: s for s in spans}
        self.imported: dict[tuple[str, datetime], Decimal] = {}
        self.model_used: dict[tuple[str, datetime], Decimal] = {}
        self._at: dict[datetime, dict[str, Decimal]] = {}

    def needs_import(self, asset: str, at: datetime) -> bool:
        span = self.spans.get(asset)
        return span is not None and span.covers(at)

    def import_points(self, times: Iterable[datetime]) -> list[tuple[str, datetime]]:
        """The (asset, time) pairs among `times` that imported history must price."""
        return [(a, t) for t in times for a in ASSETS if self.needs_import(a, t)]

    def add_imported(self, prices: Mapping[tuple[str, datetime], Decimal]) -> None:
        self.imported.update(prices)

    def price(self, asset: str, at: datetime) -> Decimal:
        """The price at time `at`: the latest imported tick if a span covers it, else the model."""
        if self.needs_import(asset, at):
            return self.imported[(asset, at)]
        tick = self.market.tick_of(at)
        price = self.market.price(asset, tick)
        self.model_used[(asset, self.market.tick_time(tick))] = price
        return price

    def prices_at(self, at: datetime) -> dict[str, Decimal]:
        """Every asset's price at `at`, computed once per distinct time (users share slots)."""
        cached = self._at.get(at)
        if cached is None:
            cached = self._at[at] = {asset: self.price(asset, at) for asset in ASSETS}
        return cached

    def model_rows(self) -> list[tuple[str, datetime, Decimal]]:
        """The model prices this batch used, as price_history rows (asset, tick start, price)."""
        return [(a, t, p) for (a, t), p in sorted(self.model_used.items())]
