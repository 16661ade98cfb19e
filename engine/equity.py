"""A user's value and P&L over time, replayed from the ledger's rows (pure: no I/O, no clock).

P&L is the contract's: value (cash + holdings at the prices of the run) minus net
contributions (deposits − USD withdrawals + USD adjustments, and crypto flows — completed
crypto withdrawals and holding adjustments — valued at the price when they happened). A
contribution moves value and contributions by the same amount, so it never shows as a gain or a
loss. One point per run, at its slot, valued at the prices that run used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from engine.accounting import mark_to_market
from engine.assets import ASSETS
from engine.money import CTX, EIGHT_DP, ZERO, usd_half_even

# Flows that are contributions (money or crypto put in or taken out by someone, not by trading).
CONTRIBUTIONS = frozenset(
    {"deposit", "credit", "withdrawal", "adjustment", "crypto_withdrawal", "holding_adjustment"}
)


@dataclass(frozen=True, slots=True)
class TradeRow:
    """One engine trade as stored: `cash_delta` is balance_after − balance_before."""

    side: str
    asset: str
    amount: Decimal
    price_usd: Decimal
    fee_usd: Decimal
    cash_delta: Decimal
    balance_after: Decimal

    @property
    def quantity_delta(self) -> Decimal:
        return self.amount if self.side == "buy" else -self.amount


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run: its slot (market time), when it committed (orders it among flows), the price of
    every asset at the slot, and its trades."""

    slot: datetime
    done_at: datetime
    prices: Mapping[str, Decimal]
    trades: Sequence[TradeRow] = ()


@dataclass(frozen=True, slots=True)
class Flow:
    """A change of cash or holdings that is not a trade of a run. `kind` in CONTRIBUTIONS counts
    as put in (or taken out); any other kind (e.g. a legacy platform trade's ledger row) is P&L.
    A crypto flow carries the price when it happened (None: the prices of the run before it)."""

    at: datetime
    kind: str
    usd: Decimal = ZERO
    asset: str | None = None
    quantity: Decimal = ZERO
    price_usd: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Point:
    """The state right after a run, marked at that run's prices."""

    at: datetime
    cash_usd: Decimal
    holdings: Mapping[str, Decimal]
    values_usd: Mapping[str, Decimal]
    prices: Mapping[str, Decimal]
    value_usd: Decimal
    contributions_usd: Decimal
    pnl_usd: Decimal
    drawdown_usd: Decimal
    buys: int
    sells: int


@dataclass(frozen=True, slots=True)
class Event:
    """A contribution (or other non-trade change) where the chart shows it: when it happened,
    kept between the slots of the runs before and after it."""

    at: datetime
    kind: str
    contribution_usd: Decimal
    usd: Decimal
    asset: str | None
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class Fill:
    """A trade with the slot of its run (the report's trade table)."""

    at: datetime
    trade: TradeRow


@dataclass(frozen=True, slots=True)
class Curve:
    points: tuple[Point, ...]
    events: tuple[Event, ...]
    fills: tuple[Fill, ...]
    fees_usd: Decimal
    # P&L of the state now (every flow included), marked at the last run's prices: what sim_pnl
    # says as long as no newer tick has been stored.
    pnl_usd: Decimal
    # P&L made within the points (last point's P&L minus the P&L before the first one).
    period_pnl_usd: Decimal
    max_drawdown_usd: Decimal
    # max_drawdown_usd as a fraction of the value at the peak it fell from (None: no value then).
    max_drawdown_ratio: Decimal | None
    # Per asset: last price / first price − 1 over the points.
    market_move: Mapping[str, Decimal] = field(default_factory=dict)
    # What holding the state before the first point, unchanged, would have made over the period.
    hold_pnl_usd: Decimal = ZERO

    @property
    def buys(self) -> int:
        return sum(p.buys for p in self.points)

    @property
    def sells(self) -> int:
        return sum(p.sells for p in self.points)


@dataclass(slots=True)
class _State:
    cash: Decimal
    holdings: dict[str, Decimal]
    contributions: Decimal = ZERO

    def apply_flow(self, flow: Flow, prices: Mapping[str, Decimal] | None) -> Decimal:
        """Apply a flow; its contribution (zero for a non-contribution)."""
        self.cash += flow.usd
        value = flow.usd
        if flow.asset is not None and flow.quantity:
            self.holdings[flow.asset] += flow.quantity
            price = flow.price_usd
            if price is None:
                price = prices[flow.asset] if prices is not None else ZERO
            # Exact (up to 16 decimals): the sum is rounded once, in the P&L, as sim_pnl does.
            value += CTX.multiply(flow.quantity, price)
        if flow.kind not in CONTRIBUTIONS:
            return ZERO
        self.contributions += value
        return value


def _ordered(runs: Sequence[RunRow], flows: Iterable[Flow]) -> list[RunRow | Flow]:
    """Runs and flows in the order they happened (a flow before a run committed at the same time)."""
    keyed: list[tuple[datetime, int, int, RunRow | Flow]] = [
        (r.done_at, 1, i, r) for i, r in enumerate(runs)
    ]
    keyed += [(f.at, 0, i, f) for i, f in enumerate(flows)]
    keyed.sort(key=lambda k: (k[0], k[1], k[2]))
    return [k[3] for k in keyed]


def build_curve(
    runs: Sequence[RunRow],
    flows: Iterable[Flow] = (),
    opening_cash: Decimal = ZERO,
    opening_holdings: Mapping[str, Decimal] | None = None,
) -> Curve:
    """Replay runs (in slot order) and flows from the opening state (normally nothing: what the
    ledger does not explain, e.g. an adopted user's opening balance) into one point per run."""
    state = _State(opening_cash, {a: (opening_holdings or {}).get(a, ZERO) for a in ASSETS})
    points: list[Point] = []
    events: list[Event] = []
    fills: list[Fill] = []
    pending: list[tuple[Flow, Decimal]] = []  # flows since the last run, placed at the next one
    prices: Mapping[str, Decimal] | None = None
    fees = ZERO
    peak: Decimal | None = None
    first_holdings: dict[str, Decimal] | None = None
    runs_left = len(runs)

    def place(before: datetime | None, after: datetime | None) -> None:
        for f, contribution in pending:
            at = f.at if before is None or f.at >= before else before
            at = at if after is None or at <= after else after
            events.append(Event(at, f.kind, contribution, f.usd, f.asset, f.quantity))
        pending.clear()

    for item in _ordered(runs, flows):
        if isinstance(item, Flow):
            # Before the first run, a crypto flow without a price is valued at the first run's.
            fallback = prices if prices is not None else runs[0].prices if runs else None
            pending.append((item, state.apply_flow(item, fallback)))
            continue
        runs_left -= 1
        place(points[-1].at if points else None, item.slot)
        if first_holdings is None:
            first_holdings = dict(state.holdings)
        buys = sells = 0
        for t in item.trades:
            state.cash += t.cash_delta
            state.holdings[t.asset] += t.quantity_delta
            fees += t.fee_usd
            fills.append(Fill(item.slot, t))
            buys += t.side == "buy"
            sells += t.side == "sell"
        prices = item.prices
        point = _point(item.slot, state, prices, buys, sells, peak)
        peak = point.pnl_usd if peak is None else max(peak, point.pnl_usd)
        points.append(point)
    place(points[-1].at if points else None, None)
    final_pnl = _pnl(state, prices) if prices is not None else ZERO
    return _summarise(points, events, fills, fees, final_pnl, ZERO, first_holdings)


def _pnl(state: _State, prices: Mapping[str, Decimal]) -> Decimal:
    """Value − contributions, summed exactly and rounded once, half away from zero (Postgres's
    round(), so it equals sim_pnl to the last decimal at the same prices)."""
    total = state.cash - state.contributions
    for asset in ASSETS:
        if state.holdings[asset]:
            total = CTX.add(total, CTX.multiply(state.holdings[asset], prices[asset]))
    return total.quantize(EIGHT_DP, rounding=ROUND_HALF_UP, context=CTX)


def _point(
    at: datetime,
    state: _State,
    prices: Mapping[str, Decimal],
    buys: int,
    sells: int,
    peak: Decimal | None,
) -> Point:
    value = state.cash + mark_to_market(state.holdings, prices)
    pnl = _pnl(state, prices)
    return Point(
        at=at,
        cash_usd=state.cash,
        holdings=dict(state.holdings),
        values_usd={a: usd_half_even(CTX.multiply(state.holdings[a], prices[a])) for a in ASSETS},
        prices=prices,
        value_usd=value,
        contributions_usd=state.contributions,
        pnl_usd=pnl,
        drawdown_usd=min(ZERO, pnl - peak) if peak is not None else ZERO,
        buys=buys,
        sells=sells,
    )


def _summarise(
    points: Sequence[Point],
    events: Sequence[Event],
    fills: Sequence[Fill],
    fees: Decimal,
    final_pnl: Decimal,
    base_pnl: Decimal,
    start_holdings: Mapping[str, Decimal] | None,
) -> Curve:
    worst = ZERO
    ratio: Decimal | None = None
    peak_value: Decimal | None = None
    peak_pnl: Decimal | None = None
    for p in points:
        if peak_pnl is None or p.pnl_usd >= peak_pnl:
            peak_pnl, peak_value = p.pnl_usd, p.value_usd
        if p.drawdown_usd < worst:
            worst = p.drawdown_usd
            ratio = CTX.divide(worst, peak_value) if peak_value else None
    move: dict[str, Decimal] = {}
    hold = ZERO
    if points:
        first, last = points[0].prices, points[-1].prices
        move = {a: CTX.divide(last[a], first[a]) - 1 for a in ASSETS if first.get(a)}
        held = start_holdings or {}
        hold = mark_to_market(held, last) - mark_to_market(held, first)
    return Curve(
        points=tuple(points),
        events=tuple(events),
        fills=tuple(fills),
        fees_usd=fees,
        pnl_usd=final_pnl,
        period_pnl_usd=(points[-1].pnl_usd - base_pnl) if points else ZERO,
        max_drawdown_usd=worst,
        max_drawdown_ratio=ratio,
        market_move=move,
        hold_pnl_usd=hold,
    )


def since(curve: Curve, start: datetime) -> Curve:
    """The part of a curve from `start` on: drawdown from the window's own running peak, fees,
    market move and P&L over the window; the P&L now (`pnl_usd`) is unchanged."""
    kept = [p for p in curve.points if p.at >= start]
    before = [p for p in curve.points if p.at < start]
    base = before[-1].pnl_usd if before else ZERO
    peak: Decimal | None = None
    points: list[Point] = []
    for p in kept:
        dd = min(ZERO, p.pnl_usd - peak) if peak is not None else ZERO
        peak = p.pnl_usd if peak is None else max(peak, p.pnl_usd)
        points.append(replace(p, drawdown_usd=dd))
    fills = [f for f in curve.fills if f.at >= start]
    start_holdings = before[-1].holdings if before else None
    if start_holdings is None and kept:
        # No point before the window: the holdings before its first run's trades.
        start_holdings = {a: kept[0].holdings[a] for a in ASSETS}
        for f in fills:
            if f.at == kept[0].at:
                start_holdings[f.trade.asset] -= f.trade.quantity_delta
    return _summarise(
        points,
        [e for e in curve.events if e.at >= start],
        fills,
        sum((f.trade.fee_usd for f in fills), ZERO),
        curve.pnl_usd,
        base,
        start_holdings,
    )


def unexplained(
    cash_usd: Decimal,
    holdings: Mapping[str, Decimal],
    runs: Iterable[RunRow],
    flows: Iterable[Flow],
) -> tuple[Decimal, dict[str, Decimal]]:
    """The opening state the rows do not explain: the current state minus what the runs' trades
    and the flows moved (zero on a database simengine created; an adopted user's opening)."""
    cash = cash_usd
    held = {a: holdings.get(a, ZERO) for a in ASSETS}
    for flow in flows:
        cash -= flow.usd
        if flow.asset is not None:
            held[flow.asset] -= flow.quantity
    for run in runs:
        for t in run.trades:
            cash -= t.cash_delta
            held[t.asset] -= t.quantity_delta
    return cash, held
