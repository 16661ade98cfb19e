"""simctl report: write a user's tear sheet (drawn by simctl.render), optionally as HTML too."""

from __future__ import annotations

import importlib.util
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from engine.equity import since
from simctl.common import Exit, out, run_async, settings
from simctl.fmt import plain, utc

if TYPE_CHECKING:
    from store.tearsheet import ReportData

_DURATION = re.compile(r"^([0-9]{1,12})\s*(m|min|h|d|w)$")


def parse_since(text: str, now: datetime) -> datetime:
    """`--since`: an ISO 8601 date or time (UTC unless it says otherwise) or a duration back from
    now (`90m`, `24h`, `7d`, `4w`)."""
    value = text.strip()
    match = _DURATION.match(value.lower())
    if match:
        n, unit = int(match.group(1)), match.group(2)
        minutes = {"m": 1, "min": 1, "h": 60, "d": 1440, "w": 10080}[unit] * n
        try:
            return now - timedelta(minutes=minutes)
        except OverflowError:
            raise Exit(2, f"--since {value} reaches back before the year 1") from None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise Exit(
            2, f"--since must be an ISO 8601 time or a duration like 24h or 7d, not {value!r}"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def report(
    user: Annotated[str, typer.Argument(metavar="USER", help="User id or email.")],
    out_file: Annotated[Path, typer.Option("--out", help="Chart to write: a .png or .svg file.")],
    html_file: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write one self-contained HTML file: the chart, the header and the trades "
            "(the latest 1,000, the total stated).",
        ),
    ] = None,
    since_text: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only the runs from this time on: ISO 8601 (UTC unless stated) or a duration "
            "back from now (90m, 24h, 7d, 4w).",
        ),
    ] = None,
) -> None:
    """Write a user's tear sheet: P&L over time (value minus net contributions, as sim_pnl
    defines it) with deposits, withdrawals and adjustments marked as events, the drawdown from
    the running peak, holdings by asset, and the market's moves with the trades at their prices,
    under a header with the strategy, period, runs, trades, fees, P&L, max drawdown and the
    market's own move. Times are UTC. A user without runs is refused (exit 1).

    Needs the report extra (matplotlib): pip install 'simengine[report]'

    Examples:

    \b
      simctl report 42 --out report-42.png
      simctl report ana@example.com --out report.svg --html report.html
      simctl report 42 --out last-day.png --since 24h
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise Exit(2, "simctl report needs matplotlib: pip install 'simengine[report]'")
    s = settings()
    suffix = out_file.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise Exit(2, f"--out must name a .png or .svg file, not {out_file.name!r}")
    start = parse_since(since_text, datetime.now(UTC)) if since_text is not None else None
    for target in (out_file, html_file):
        if target is not None and not target.parent.is_dir():
            raise Exit(2, f"cannot write {target}: {target.parent} is not a directory")

    async def go() -> ReportData:
        from store.db import connection
        from store.tearsheet import report_data
        from store.users import resolve_user

        async with connection(s.database_url) as conn:
            return await report_data(conn, await resolve_user(conn, user))

    data = run_async(go)
    if not data.runs:
        raise Exit(1, f"user {data.user_id} has no runs yet: nothing to report")
    curve = data.curve()
    if start is not None:
        curve = since(curve, start)
        if not curve.points:
            raise Exit(1, f"user {data.user_id} has no runs since {utc(start)} UTC")
    from simctl.render import Sheet, html_page, render

    sheet = Sheet(data, curve, s.sim_default_strategy, start)
    # Each file is written beside its target and renamed into place only when both are written:
    # a refused --html leaves no chart behind, and a reader never sees half a file.
    image_tmp = _partial(out_file)
    html_tmp = None if html_file is None else _partial(html_file)
    try:
        image = render(sheet, image_tmp)
        if html_file is not None and html_tmp is not None:
            html_tmp.write_text(html_page(sheet, image, suffix), encoding="utf-8")
            html_tmp.replace(html_file)
        image_tmp.replace(out_file)
    except OSError as exc:
        for partial in (image_tmp, html_tmp):
            if partial is not None:
                partial.unlink(missing_ok=True)
        raise Exit(2, f"cannot write the report: {exc.strerror}: {exc.filename}") from None
    wrote = f"wrote {out_file}" + (f" and {html_file}" if html_file is not None else "")
    now = curve.pnl_usd if data.pnl_now_usd is None else data.pnl_now_usd
    out.print(
        f"{wrote}: user {data.user_id}, {len(curve.points)} run(s); P&L now {plain(now)} USD",
        markup=False,
    )


def _partial(path: Path) -> Path:
    """A hidden file beside `path`, with its suffix (the chart's format follows the suffix)."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
