"""simctl report: a user's equity curve (cash, holdings value, total) with trades marked."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Annotated, Any

import typer

from simctl.common import Exit, out, settings
from simctl.market import run_priced
from store.db import connection


def report(
    user: Annotated[str, typer.Argument(help="User id or email.")],
    out_file: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
    as_html: Annotated[
        bool, typer.Option("--html", help="Also write FILE.html with the chart and the trades.")
    ] = False,
) -> None:
    """Plot a user's equity curve over their runs: cash, holdings marked to market, total and
    P&L (total − net contributions, so deposits, withdrawals and adjustments are not gains), with
    buys and sells marked. Prices are the ones the runs used (model or imported); the P&L now is
    sim_pnl's (value at the latest prices − net contributions), as `users show` prints it.

    Example: simctl report 42 --out equity-42.png --html
    """
    s = settings()
    if out_file.suffix.lower() != ".png":
        raise Exit(2, "--out must name a .png file")

    async def go() -> tuple[int, list[dict[str, Any]], dict[str, Any] | None]:
        from store.ops import resolve_user
        from store.reports import current_pnl, equity_points

        async with connection(s.database_url) as conn:
            uid = await resolve_user(conn, user)
            return uid, await equity_points(conn, uid, s), await current_pnl(conn, uid)

    uid, points, now = run_priced(go)
    if not points:
        raise Exit(1, f"user {uid} has no runs yet; nothing to plot")
    try:
        _plot(uid, points, out_file)
    except OSError as exc:
        raise Exit(2, f"cannot write {out_file}: {exc.strerror}") from None
    if as_html:
        _html(uid, points, out_file)
    pnl = "-" if now is None else f"{now['total_pnl_usd']}"
    out.print(f"wrote {out_file} ({len(points)} runs); P&L now {pnl} USD")


def _plot(uid: int, points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    times = [float(mdates.date2num(p["at"])) for p in points]  # type: ignore[no-untyped-call]
    # Plotting needs floats; the money itself stayed Decimal up to here.
    cash = [float(p["cash"]) for p in points]
    held = [float(p["holdings_value"]) for p in points]
    total = [float(p["total"]) for p in points]
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    ax.plot(times, total, label="total equity", color="black", linewidth=1.6)
    ax.plot(times, cash, label="cash (USD)", color="tab:blue", linewidth=1)
    ax.plot(times, held, label="holdings value", color="tab:orange", linewidth=1)
    pnl = [float(p["pnl"]) for p in points]
    ax.plot(times, pnl, label="P&L (total − contributions)", color="tab:purple", linewidth=1)
    for kind, marker, color in (("buys", "^", "tab:green"), ("sells", "v", "tab:red")):
        xs = [t for t, p in zip(times, points, strict=True) if p[kind]]
        ys = [float(p["total"]) for p in points if p[kind]]
        if xs:
            ax.scatter(xs, ys, marker=marker, color=color, label=kind[:-1], zorder=3, s=18)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))  # type: ignore[no-untyped-call]
    ax.set_title(f"user {uid}: equity over {len(points)} simulated runs")
    ax.set_ylabel("USD")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _html(uid: int, points: list[dict[str, Any]], png: Path) -> None:
    image = base64.b64encode(png.read_bytes()).decode()
    rows = "".join(
        f"<tr><td>{html.escape(p['at'].isoformat())}</td><td>{p['cash']}</td>"
        f"<td>{p['holdings_value']}</td><td>{p['total']}</td><td>{p['contributions']}</td>"
        f"<td>{p['pnl']}</td><td>{p['buys']}</td><td>{p['sells']}</td></tr>"
        for p in points
    )
    png.with_suffix(".html").write_text(
        f"<!doctype html><meta charset=utf-8><title>user {uid}</title>"
        f"<h1>User {uid}: equity curve</h1><img src='data:image/png;base64,{image}'>"
        "<table border=1><tr><th>slot</th><th>cash</th><th>holdings value</th><th>total</th>"
        f"<th>contributions</th><th>P&amp;L</th><th>buys</th><th>sells</th></tr>{rows}</table>",
        encoding="utf-8",
    )
