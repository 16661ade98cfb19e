"""engine.equity: P&L = value − net contributions, one point per run; contributions never show as
gains or losses; drawdown from the running peak; windows; the opening the rows do not explain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.assets import ASSETS
from engine.equity import Flow, RunRow, TradeRow, build_curve, since, unexplained

T0 = datetime(2026, 1, 5, tzinfo=UTC)
STEP = timedelta(minutes=5)
D = Decimal

prices_st = st.fixed_dictionaries({a: st.decimals(D("0.01"), D("90000"), places=2) for a in ASSETS})


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[RunRow], list[Flow]]:
    """Runs whose trades keep cash and holdings non-negative, and USD flows between them."""
    n = draw(st.integers(1, 25))
    cash = D("10000")
    held = dict.fromkeys(ASSETS, D(0))
    runs: list[RunRow] = []
    flows = [Flow(T0 - STEP, "deposit", cash)]
    for i in range(n):
        slot = T0 + i * STEP
        prices = draw(prices_st)
        trades: list[TradeRow] = []
        for _ in range(draw(st.integers(0, 3))):
            asset = draw(st.sampled_from(ASSETS))
            fee = draw(st.decimals(D(0), D("2"), places=8))
            if draw(st.booleans()) and held[asset] > 0:
                qty = held[asset]
                delta = (qty * prices[asset]).quantize(D("0.00000001")) - fee
                side = "sell"
            else:
                qty = D("0.5")
                delta = -(qty * prices[asset]).quantize(D("0.00000001")) - fee
                side = "buy"
                if cash + delta < 0:
                    continue
            cash += delta
            held[asset] += qty if side == "buy" else -qty
            trades.append(TradeRow(side, asset, qty, prices[asset], fee, delta, cash))
        runs.append(RunRow(slot, slot + timedelta(seconds=1), prices, tuple(trades)))
        if draw(st.booleans()):
            kind = draw(st.sampled_from(["deposit", "adjustment", "withdrawal"]))
            amount = draw(st.decimals(D(1), D(500), places=2))
            usd = amount if kind == "deposit" else -min(amount, cash)
            cash += usd
            flows.append(Flow(slot + timedelta(seconds=30), kind, usd))
    return runs, flows


@given(histories())
@settings(max_examples=150, deadline=None)
def test_usd_contributions_never_move_pnl(history: tuple[list[RunRow], list[Flow]]) -> None:
    runs, flows = history
    with_flows = build_curve(runs, flows)
    # The same runs with only the opening deposit: every point's P&L is the same.
    only_opening = build_curve(runs, flows[:1])
    assert [p.pnl_usd for p in with_flows.points] == [p.pnl_usd for p in only_opening.points]
    assert len(with_flows.points) == len(runs)
    assert len(with_flows.events) == len(flows)
    for p in with_flows.points:
        value = p.cash_usd + sum((p.holdings[a] * p.prices[a] for a in ASSETS), D(0))
        assert abs(p.value_usd - value) <= D("0.00000001")
        assert p.pnl_usd == p.value_usd - p.contributions_usd
    # Nothing after the last run but USD flows: the P&L now is the last point's.
    assert with_flows.pnl_usd == with_flows.points[-1].pnl_usd


@given(histories())
@settings(max_examples=100, deadline=None)
def test_drawdown_is_the_fall_from_the_running_peak(
    history: tuple[list[RunRow], list[Flow]],
) -> None:
    curve = build_curve(*history)
    peak = curve.points[0].pnl_usd
    for p in curve.points:
        peak = max(peak, p.pnl_usd)
        assert p.drawdown_usd == p.pnl_usd - peak <= 0
    assert curve.max_drawdown_usd == min(p.drawdown_usd for p in curve.points)
    assert curve.fees_usd == sum((f.trade.fee_usd for f in curve.fills), D(0))


@given(histories(), st.integers(0, 30))
@settings(max_examples=100, deadline=None)
def test_a_window_keeps_its_points_and_measures_pnl_within_it(
    history: tuple[list[RunRow], list[Flow]], cut: int
) -> None:
    full = build_curve(*history)
    start = T0 + cut * STEP
    window = since(full, start)
    assert [p.at for p in window.points] == [p.at for p in full.points if p.at >= start]
    assert window.pnl_usd == full.pnl_usd
    if window.points:
        before = [p for p in full.points if p.at < start]
        base = before[-1].pnl_usd if before else D(0)
        assert window.period_pnl_usd == window.points[-1].pnl_usd - base
        assert window.points[0].drawdown_usd == 0


def test_a_crypto_flow_is_valued_when_it_happened_and_is_not_a_gain() -> None:
    p1 = dict.fromkeys(ASSETS, D(1)) | {"ETH": D("3000")}
    p2 = p1 | {"ETH": D("3300")}
    runs = [
        RunRow(T0, T0, p1),
        RunRow(T0 + STEP, T0 + STEP, p2),
    ]
    flows = [
        Flow(T0 - STEP, "deposit", D("100")),
        # Two ETH arrive between the runs, worth 3000 each then: 6000 contributed.
        Flow(
            T0 + timedelta(minutes=1),
            "holding_adjustment",
            asset="ETH",
            quantity=D(2),
            price_usd=D("3000"),
        ),
    ]
    curve = build_curve(runs, flows)
    assert [p.contributions_usd for p in curve.points] == [D("100"), D("6100")]
    # The second run values the ETH at 3300: the 600 rise is P&L, the 6000 arrival is not.
    assert [p.pnl_usd for p in curve.points] == [D(0), D("600")]
    assert [e.kind for e in curve.events] == ["deposit", "holding_adjustment"]
    assert curve.events[1].at == T0 + timedelta(minutes=1)
    assert curve.events[1].contribution_usd == D("6000")
    # A withdrawal of the ETH after the last run, priced as the last run priced it: no change.
    out = Flow(T0 + 2 * STEP, "crypto_withdrawal", asset="ETH", quantity=D(-2), price_usd=None)
    after = build_curve(runs, [*flows, out])
    assert after.pnl_usd == curve.pnl_usd == D("600")


def test_events_are_shown_between_the_slots_of_their_runs() -> None:
    prices = dict.fromkeys(ASSETS, D(1))
    # Runs catching up on old slots: a deposit made (now) between them shows at the next slot.
    runs = [RunRow(T0 + i * STEP, T0 + timedelta(days=30, seconds=i), prices) for i in range(3)]
    deposit = Flow(T0 + timedelta(days=30, seconds=1, milliseconds=500), "deposit", D(5))
    curve = build_curve(runs, [deposit])
    assert curve.events[0].at == T0 + 2 * STEP
    assert [p.contributions_usd for p in curve.points] == [D(0), D(0), D(5)]


def test_the_opening_the_rows_do_not_explain() -> None:
    prices = dict.fromkeys(ASSETS, D(2))
    trade = TradeRow("buy", "BTC", D(1), D(2), D(0), D(-2), D(98))
    runs = [RunRow(T0, T0, prices, (trade,))]
    flows = [Flow(T0 - STEP, "deposit", D(60))]
    # Now: 98 USD and 1 BTC; the rows explain 58 USD and 1 BTC: 40 USD came from elsewhere.
    cash, held = unexplained(D(98), {"BTC": D(1)}, runs, flows)
    assert cash == D(40) and not any(held.values())
    curve = build_curve(runs, flows, cash, held)
    assert curve.points[0].cash_usd == D(98)
    # Not contributed by any row: it counts as P&L, as in sim_pnl.
    assert curve.pnl_usd == D(98) + D(2) - D(60)
