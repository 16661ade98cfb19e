"""A user's tear sheet drawn: P&L over time with deposits, withdrawals and adjustments marked as
events, drawdown under it, holdings by asset, the market with the trades at their prices, and a
header with the figures; and one self-contained HTML page with the chart and every trade.

The numbers come from engine.equity over the rows store.tearsheet reads; this module only draws.
matplotlib is imported when a chart is drawn (Agg backend, no display needed)."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.assets import ASSETS, STABLECOINS
from engine.equity import Curve
from simctl.fmt import percent, plain, span, usd, utc

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from store.tearsheet import ReportData

TRADE_ROWS = 1_000  # the HTML's trade table shows the latest this many, and says so
EVENT_LABELS = 12  # events annotated one by one on the chart; more are counted in the legend
KIND_STYLE = {  # how each kind of event is marked: (label, colour, marker)
    "deposit": ("deposit", "tab:blue", "P"),
    "credit": ("credit", "tab:blue", "P"),
    "withdrawal": ("USD withdrawal", "tab:purple", "X"),
    "adjustment": ("USD adjustment", "tab:gray", "D"),
    "crypto_withdrawal": ("crypto withdrawal", "tab:purple", "X"),
    "holding_adjustment": ("holding adjustment", "tab:gray", "D"),
}
ASSET_COLOURS = {
    "USD": "#9ecae1",
    "BTC": "#f7931a",
    "ETH": "#627eea",
    "USDT": "#26a17b",
    "USDC": "#2775ca",
    "XRP": "#444444",
    "ADA": "#0d1e7e",
}


@dataclass(frozen=True, slots=True)
class Sheet:
    """What one report shows, beside the curve: the user's strategy and the window."""

    data: ReportData
    curve: Curve
    default_strategy: str
    start: datetime | None

    def header(self) -> list[tuple[str, str]]:
        """(label, value) rows, the same on the chart and in the HTML."""
        c, d = self.curve, self.data
        first, last = c.points[0].at, c.points[-1].at
        strategy = d.strategy or f"{self.default_strategy} (the default)"
        params = json.dumps(d.params, ensure_ascii=False, sort_keys=True) if d.params else "none"
        moves = ", ".join(
            f"{a} {percent(m)}" for a, m in c.market_move.items() if a not in STABLECOINS
        )
        drawdown = usd(c.max_drawdown_usd)
        if c.max_drawdown_ratio is not None:
            drawdown += f" ({percent(c.max_drawdown_ratio)} of the value at the peak)"
        rows = [
            ("strategy", f"{strategy}, parameters {params}, a run every {d.interval_s} s"),
            ("period", f"{utc(first)} \u2192 {utc(last)} UTC ({span(last - first)})"),
            ("runs", f"{len(c.points):,}"),
            ("trades", f"{len(c.fills):,} ({c.buys:,} buys, {c.sells:,} sells)"),
            ("fees paid", usd(c.fees_usd)),
        ]
        if self.start is not None:
            rows.append(("P&L over the period", usd(c.period_pnl_usd, signed=True)))
        now = d.pnl_now_usd
        total = (
            f"{usd(c.pnl_usd if now is None else now, signed=True)} (value minus net contributions"
        )
        total += ")" if now is None else ", now, as sim_pnl says)"
        if now is not None and c.points[-1].pnl_usd != now:
            total += f"; {usd(c.points[-1].pnl_usd, signed=True)} at the last run's prices"
        rows += [
            ("total P&L", total),
            ("max drawdown", drawdown),
            ("market over the period", moves or "-"),
            ("holding the starting portfolio", usd(c.hold_pnl_usd, signed=True)),
        ]
        return rows


def render(sheet: Sheet, path: Path) -> bytes:
    """Draw the sheet to `path` (.png or .svg); returns the file's bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    c = sheet.curve
    fig = plt.figure(figsize=(12, 13.5), dpi=100)
    grid = fig.add_gridspec(
        4,
        1,
        height_ratios=[3, 1.2, 2.2, 2.2],
        hspace=0.12,
        top=0.815,
        bottom=0.06,
        left=0.09,
        right=0.86,
    )
    ax_pnl = fig.add_subplot(grid[0])
    ax_dd = fig.add_subplot(grid[1], sharex=ax_pnl)
    ax_held = fig.add_subplot(grid[2], sharex=ax_pnl)
    ax_mkt = fig.add_subplot(grid[3], sharex=ax_pnl)

    _header(fig, sheet)
    # One vectorised conversion; trades and events are placed by their run's slot.
    xs = [float(x) for x in mdates.date2num([p.at for p in c.points])]  # type: ignore[no-untyped-call]
    x_of = {p.at: x for p, x in zip(c.points, xs, strict=True)}
    few = len(xs) <= 60
    # Plotting needs floats; the money stayed Decimal up to here.
    pnl = [float(p.pnl_usd) for p in c.points]
    ax_pnl.plot(
        xs,
        pnl,
        color="black",
        linewidth=1.3,
        marker="o" if few else None,
        markersize=3.5,
        label="P&L (value \u2212\nnet contributions)",
        zorder=3,
    )
    ax_pnl.fill_between(
        xs,
        pnl,
        0,
        where=[v >= 0 for v in pnl],
        color="tab:green",
        alpha=0.15,
        interpolate=True,
        linewidth=0,
    )
    ax_pnl.fill_between(
        xs,
        pnl,
        0,
        where=[v < 0 for v in pnl],
        color="tab:red",
        alpha=0.15,
        interpolate=True,
        linewidth=0,
    )
    ax_pnl.axhline(0, color="grey", linewidth=0.8)
    ax_pnl.set_ylabel("P&L (USD)")
    ax_pnl.set_title(
        "P&L over time; deposits, withdrawals and adjustments are events, not gains",
        loc="left",
        fontsize=10,
    )
    low, high = ax_pnl.get_ylim()
    if high - low < 2:  # a flat P&L: a readable scale around it, not ±0.04 USD
        mid = (high + low) / 2
        ax_pnl.set_ylim(mid - 1, mid + 1)
    _events(ax_pnl, sheet, mdates)
    ax_pnl.legend(loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=8, frameon=False)

    dd = [float(p.drawdown_usd) for p in c.points]
    ax_dd.fill_between(xs, dd, 0, color="tab:red", alpha=0.35, linewidth=0, step=None)
    ax_dd.plot(xs, dd, color="tab:red", linewidth=0.8, marker="o" if few else None, markersize=2.5)
    ax_dd.set_ylabel("drawdown (USD)")
    ax_dd.set_title("drawdown: P&L below its running peak", loc="left", fontsize=10)
    if min(dd) == 0:
        ax_dd.set_ylim(-1, 0.1)

    _holdings(ax_held, xs, c)
    _market(ax_mkt, xs, x_of, c)

    for ax in (ax_pnl, ax_dd, ax_held, ax_mkt):
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in (ax_pnl, ax_dd, ax_held):
        ax.tick_params(labelbottom=False)
    locator = mdates.AutoDateLocator(tz=UTC, minticks=4, maxticks=9)  # type: ignore[no-untyped-call]
    formatter = mdates.ConciseDateFormatter(locator, tz=UTC, show_offset=True)  # type: ignore[no-untyped-call]
    # The year always shows: in the labels for spans over a year, else in the offset text.
    formatter.offset_formats = ["", "%Y", "%Y-%m", "%Y-%m-%d", "%Y-%m-%d", "%Y-%m-%d %H:%M"]
    ax_mkt.xaxis.set_major_locator(locator)
    ax_mkt.xaxis.set_major_formatter(formatter)
    ax_mkt.set_xlabel("time (UTC)")
    if len(xs) == 1 or xs[0] == xs[-1]:
        pad = max(sheet.data.interval_s, 600) / 86_400
        ax_mkt.set_xlim(xs[0] - pad, xs[0] + pad)
    else:
        pad = (xs[-1] - xs[0]) * 0.02
        ax_mkt.set_xlim(xs[0] - pad, xs[-1] + pad)
    fig.savefig(path, format=path.suffix.lower().lstrip("."))
    plt.close(fig)
    return path.read_bytes()


def _header(fig: Any, sheet: Sheet) -> None:
    c = sheet.curve
    title = f"User {sheet.data.user_id}: {len(c.points):,} simulated run" + (
        "" if len(c.points) == 1 else "s"
    )
    fig.text(0.09, 0.975, title, fontsize=15, fontweight="bold", va="top")
    rows = sheet.header()
    y = 0.952
    for label, value in rows:
        fig.text(0.09, y, label, fontsize=9.5, color="#555555", va="top")
        fig.text(0.29, y, value, fontsize=9.5, va="top")
        y -= 0.0128


def _events(ax: Axes, sheet: Sheet, mdates: Any) -> None:
    """Contributions as vertical markers with their amount; a legend entry per kind."""
    events = sheet.curve.events
    if not events:
        return
    seen: set[str] = set()
    low, high = ax.get_ylim()
    for i, e in enumerate(events):
        label, colour, marker = KIND_STYLE.get(e.kind, (e.kind.replace("_", " "), "tab:olive", "o"))
        x = float(mdates.date2num(e.at))
        ax.axvline(x, color=colour, linestyle=":", linewidth=1, alpha=0.7, zorder=1)
        legend = None
        if label not in seen:
            seen.add(label)
            n = sum(1 for o in events if KIND_STYLE.get(o.kind, (o.kind,))[0] == label)
            legend = label if n == 1 else f"{label} ({n})"
        ax.scatter(
            [x], [high], marker=marker, color=colour, s=45, zorder=4, clip_on=False, label=legend
        )
        if i < EVENT_LABELS:
            what = usd(e.contribution_usd, signed=True)
            if e.asset is not None:
                what = f"{plain(e.quantity)} {e.asset} ({what})"
            ax.annotate(
                what,
                (x, high),
                xytext=(4, -12 - 10 * (i % 3)),
                textcoords="offset points",
                fontsize=7,
                color=colour,
            )
    ax.set_ylim(low, high)


def _holdings(ax: Axes, xs: list[float], c: Curve) -> None:
    """Cash and each asset's value, stacked: the top is the account's value."""
    layers: list[tuple[str, list[float]]] = [("USD", [float(p.cash_usd) for p in c.points])]
    for a in ASSETS:
        values = [float(p.values_usd[a]) for p in c.points]
        if any(values):
            layers.append((a, values))
    names = [n if n != "USD" else "cash (USD)" for n, _ in layers]
    colours = [ASSET_COLOURS[n] for n, _ in layers]
    if len(xs) < 3:
        width = (xs[-1] - xs[0]) / 4 if xs[-1] != xs[0] else 0.004
        bottom = [0.0] * len(xs)
        for (_, values), name, colour in zip(layers, names, colours, strict=True):
            ax.bar(xs, values, width=width, bottom=bottom, color=colour, label=name)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    else:
        ax.stackplot(xs, *[v for _, v in layers], labels=names, colors=colours, alpha=0.9)
    ax.set_ylabel("value (USD)")
    ax.set_title(
        "holdings by asset, valued at each run's prices (stacked)", loc="left", fontsize=10
    )
    ax.legend(loc="center left", bbox_to_anchor=(1.005, 0.5), fontsize=8, frameon=False)


def _market(ax: Axes, xs: list[float], x_of: dict[datetime, float], c: Curve) -> None:
    """Each asset's price relative to the period's start, with buys and sells at their prices."""
    first = c.points[0].prices
    traded = {f.trade.asset for f in c.fills}
    held = {a for p in c.points for a in ASSETS if p.holdings[a]}
    shown = [a for a in ASSETS if (a in traded or a in held or a not in STABLECOINS) and first[a]]
    few = len(xs) <= 60
    for a in shown:
        base = first[a]
        rel = [float(p.prices[a] / base - 1) * 100 for p in c.points]
        ax.plot(
            xs,
            rel,
            color=ASSET_COLOURS[a],
            linewidth=1,
            label=a,
            marker="." if few else None,
            zorder=3,
        )
    for side, marker, colour in (("buy", "^", "tab:green"), ("sell", "v", "tab:red")):
        pts = [
            (x_of[f.at], float(f.trade.price_usd / first[f.trade.asset] - 1) * 100)
            for f in c.fills
            if f.trade.side == side and first[f.trade.asset]
        ]
        if pts:
            many = len(pts) >= 500  # small and faint, so the price lines stay readable
            ax.scatter(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker=marker,
                color=colour,
                s=5 if many else 28,
                alpha=0.45 if many else 1.0,
                zorder=2 if many else 4,
                label=f"{side}s ({len(pts):,})",
                edgecolors="none" if many else "black",
                linewidths=0.4,
            )
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylabel("price vs start (%)")
    ax.set_title(
        "the market: each asset's price from the period's start; trades at their fill prices",
        loc="left",
        fontsize=10,
    )
    ax.legend(loc="center left", bbox_to_anchor=(1.005, 0.5), fontsize=8, frameon=False)


def html_page(sheet: Sheet, image: bytes, suffix: str) -> str:
    """One self-contained page: the header, the chart inline (base64) and the latest trades."""
    c = sheet.curve
    mime = "image/svg+xml" if suffix == ".svg" else "image/png"
    header = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
        for label, value in sheet.header()
    )
    shown = c.fills[-TRADE_ROWS:]
    note = (
        f"All {len(c.fills):,} trades, oldest first."
        if len(shown) == len(c.fills)
        else f"The latest {len(shown):,} of {len(c.fills):,} trades, oldest first."
    )
    rows = "".join(
        "<tr>"
        f"<td>{html.escape(utc(f.at))}</td><td class={f.trade.side}>{f.trade.side}</td>"
        f"<td>{f.trade.asset}</td><td>{plain(f.trade.amount)}</td>"
        f"<td>{plain(f.trade.price_usd)}</td><td>{plain(f.trade.fee_usd)}</td>"
        f"<td>{plain(f.trade.balance_after)}</td></tr>"
        for f in shown
    )
    title = f"User {sheet.data.user_id}: simulation report"
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}"
        "th,td{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}"
        ".trades td{text-align:right;font-variant-numeric:tabular-nums}"
        ".trades td:nth-child(-n+3){text-align:left}.buy{color:#1a7f37}.sell{color:#c62828}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Simulated trades (paper trading), times in UTC.</p>"
        f"<table class=header>{header}</table>"
        f"<img alt='P&amp;L, drawdown, holdings and the market over the period' "
        f"src='data:{mime};base64,{base64.b64encode(image).decode()}'>"
        f"<h2>Trades</h2><p>{note}</p><table class=trades><thead><tr><th>time (UTC)</th>"
        "<th>side</th><th>asset</th><th>amount</th><th>price (USD)</th><th>fee (USD)</th>"
        f"<th>balance after (USD)</th></tr></thead><tbody>{rows}</tbody></table>"
        "</body></html>\n"
    )
