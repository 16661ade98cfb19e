"""`simctl report` over real runs: one run, 50 runs and 5,000 runs of one user driven through the
batch code, and one HTML report. The artefacts are kept (tmp dir; `SIMENGINE_REPORT_EXAMPLES=DIR`
also copies them there, as docs/report-examples/ was made); the assertions are on the data
behind the pictures: one point per run, and the last point's P&L equals sim_pnl's."""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from engine.market import Market
from simconfig import Settings
from store.db import Conn, create_pool
from store.moves import adjust_holding, move_usd
from store.tearsheet import report_data
from store.users import create_user, set_flags
from store.withdrawals import move_withdrawal, request_withdrawal
from tests.support.procs import simctl
from tests.support.runs import drive, fast_forward
from tests.support.services import create_database, drop_database, url_for
from workers.batch import BatchRunner

ACTOR = "sha256:test"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


async def new_user(
    pg: Conn, email: str, deposit: str, strategy: str, interval: timedelta = timedelta(minutes=5)
) -> int:
    interval_s = int(interval.total_seconds())
    uid: int = await create_user(pg, ACTOR, email, "", Decimal(deposit), True, interval_s, strategy)
    return uid


def keep(paths: list[Path]) -> None:
    """Copy artefacts to SIMENGINE_REPORT_EXAMPLES when set (how docs/report-examples was made)."""
    target = os.environ.get("SIMENGINE_REPORT_EXAMPLES")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copy(p, Path(target) / p.name)


async def sim_pnl(pg: asyncpg.Connection, user_id: int) -> Decimal:
    value: Decimal = await pg.fetchval(
        "SELECT total_pnl_usd FROM sim_pnl WHERE user_id = $1", user_id
    )
    return value


async def check_series(pg: asyncpg.Connection, user_id: int, runs: int) -> None:
    data = await report_data(pg, user_id)
    curve = data.curve()
    assert len(curve.points) == len(data.runs) == runs
    assert [p.at for p in curve.points] == sorted(p.at for p in curve.points)
    assert curve.points[-1].pnl_usd == curve.pnl_usd == await sim_pnl(pg, user_id)
    assert data.opening_cash == 0 and not any(data.opening_holdings.values())
    assert curve.fees_usd == await pg.fetchval(
        "SELECT coalesce(sum(fee_usd), 0) FROM trades WHERE user_id = $1", user_id
    )
    assert all(p.drawdown_usd <= 0 for p in curve.points)


@pytest.mark.parametrize(
    ("runs", "interval"),
    [(1, timedelta(minutes=5)), (50, timedelta(minutes=5)), (5_000, timedelta(hours=1))],
    ids=["1-run", "50-runs", "5000-runs"],
)
async def test_report_png_at_any_span(
    pg: asyncpg.Connection,
    runner: BatchRunner,
    env: dict[str, str],
    tmp_path: Path,
    runs: int,
    interval: timedelta,
) -> None:
    uid = await new_user(pg, f"span{runs}@example.com", "10000", "random", interval)
    if runs == 50:  # a strategy with parameters, for the header to show them
        params = {"usd": "150", "assets": ["BTC", "ETH", "ADA"]}
        await set_flags(pg, ACTOR, "set_strategy", uid, strategy="dca", params=params)
    slots = [START + i * interval for i in range(runs)]
    await (fast_forward if runs > 100 else drive)(pg, runner, uid, slots)
    await check_series(pg, uid, runs)

    png = tmp_path / f"report-{runs}-run{'s' if runs > 1 else ''}.png"
    page = tmp_path / "capped.html"
    result = simctl(["report", str(uid), "--out", str(png), "--html", str(page)], env)
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{runs} run(s)" in result.stdout
    # The trade table is capped at the latest 1,000, and says how many there are.
    trades = await pg.fetchval("SELECT count(*) FROM trades WHERE user_id = $1", uid)
    text = page.read_text(encoding="utf-8")
    rows = text.count("<td class=buy>") + text.count("<td class=sell>")
    assert rows == min(trades, 1_000)
    if trades > 1_000:
        assert f"The latest 1,000 of {trades:,} trades" in text
    keep([png])


async def test_html_report_has_the_header_events_and_every_trade(
    pg: asyncpg.Connection, runner: BatchRunner, env: dict[str, str], tmp_path: Path
) -> None:
    uid = await new_user(pg, "html@example.com", "5000", "random", timedelta(hours=1))
    hour = timedelta(hours=1)
    await drive(pg, runner, uid, [START + i * hour for i in range(20)])
    # Money put in and taken out between runs: events, not gains or losses.
    await move_usd(pg, ACTOR, uid, Decimal("2500"), "deposit", None)
    await move_usd(pg, ACTOR, uid, Decimal("-300"), "adjustment", "duplicate credit")
    before = (await report_data(pg, uid)).curve()
    await drive(pg, runner, uid, [START + (20 + i) * hour for i in range(20)])
    after = (await report_data(pg, uid)).curve()
    # The contributions moved value, not P&L: the 20th point's P&L is what it was.
    assert after.points[19].pnl_usd == before.points[19].pnl_usd
    assert after.points[20].contributions_usd - after.points[19].contributions_usd == Decimal(
        "2200"
    )
    assert [e.kind for e in after.events] == ["deposit", "deposit", "adjustment"]
    assert after.points[-1].pnl_usd == await sim_pnl(pg, uid)

    png, page = tmp_path / "report.png", tmp_path / "report.html"
    result = simctl(["report", "html@example.com", "--out", str(png), "--html", str(page)], env)
    assert result.returncode == 0, result.stderr
    text = page.read_text(encoding="utf-8")
    assert "<img alt=" in text and "src='data:image/png;base64," in text
    assert not re.search(r"(src|href)=['\"]?https?:", text)  # nothing fetched from a network
    trades = await pg.fetch(
        "SELECT amount, price_usd, fee_usd, balance_after FROM trades WHERE user_id = $1 "
        "ORDER BY id",
        uid,
    )
    assert text.count("<td class=buy>") + text.count("<td class=sell>") == len(trades)
    assert f"All {len(trades):,} trades" in text
    last = trades[-1]
    assert f"<td>{last['balance_after']:f}</td>" in text and "E-" not in text
    for label in (
        "strategy",
        "period",
        "runs",
        "trades",
        "fees paid",
        "total P&amp;L",
        "max drawdown",
        "market over the period",
    ):
        assert f"<th>{label}</th>" in text
    keep([png, page])

    # A window: only its runs are drawn (as SVG here); one after the last run is refused.
    svg = tmp_path / "window.svg"
    window = simctl(["report", str(uid), "--out", str(svg), "--since", "2026-03-03T12:00"], env)
    assert window.returncode == 0, window.stderr
    assert "user 1, 13 run(s)" in window.stdout.replace(f"user {uid},", "user 1,")
    assert "<svg" in svg.read_text(encoding="utf-8")[:1000]
    late = simctl(["report", str(uid), "--out", str(svg), "--since", "2030-01-01"], env)
    assert late.returncode == 1 and "no runs since 2030-01-01 00:00 UTC" in late.stderr


async def test_a_crypto_flow_is_a_contribution_not_a_loss(
    pg: asyncpg.Connection, runner: BatchRunner
) -> None:
    uid = await new_user(pg, "flows@example.com", "1000", "random")
    hour = timedelta(hours=1)
    await drive(pg, runner, uid, [START + i * hour for i in range(3)])
    await adjust_holding(pg, ACTOR, uid, "ETH", Decimal("2"), "airdrop")
    curve = (await report_data(pg, uid)).curve()
    # Right after the airdrop (valued at the price then, the last run's), P&L has not moved.
    assert curve.pnl_usd == curve.points[-1].pnl_usd
    assert curve.events[-1].kind == "holding_adjustment" and curve.events[-1].contribution_usd > 0
    await drive(pg, runner, uid, [START + i * hour for i in range(3, 6)])
    wid = await request_withdrawal(pg, ACTOR, uid, "ETH", Decimal("0.5"), "0xabc")
    await move_withdrawal(pg, ACTOR, wid, "process")
    await move_withdrawal(pg, ACTOR, wid, "complete")
    curve = (await report_data(pg, uid)).curve()
    assert [e.kind for e in curve.events][-2:] == ["holding_adjustment", "crypto_withdrawal"]
    assert curve.pnl_usd == curve.points[-1].pnl_usd
    counts_crypto = await pg.fetchval(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_name = 'sim_pnl' AND column_name = 'net_contributions_usd'"
    )
    if counts_crypto:  # a read side that counts crypto flows as contributions agrees exactly
        assert curve.pnl_usd == await sim_pnl(pg, uid)


async def test_report_refuses_a_user_without_runs_and_an_unknown_user(
    pg: asyncpg.Connection, env: dict[str, str], tmp_path: Path
) -> None:
    uid = await new_user(pg, "idle@example.com", "100", "random")
    png = tmp_path / "r.png"
    for who, why in ((str(uid), "has no runs yet"), ("999999", "no user with id 999999")):
        result = simctl(["report", who, "--out", str(png)], env)
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1 and why in result.stderr
    assert not png.exists()
    bad = simctl(["report", str(uid), "--out", str(tmp_path / "r.jpg")], env)
    assert bad.returncode == 2 and ".png or .svg" in bad.stderr


async def test_fast_forward_writes_what_the_batches_write(
    template: str, settings: Settings
) -> None:
    """The 5,000-run artefact is written by fast_forward: it must leave exactly the rows that
    running the same slots through the batch code leaves (same user id, same market)."""
    slots = [START + i * timedelta(minutes=5) for i in range(30)]
    found = []
    for how in (drive, fast_forward):
        name = create_database(template)
        try:
            pool = await create_pool(url_for(name), max_size=2)
            try:
                runner = BatchRunner(pool, settings, Market(settings.market_params()))
                async with pool.acquire() as conn:
                    uid = await new_user(conn, "same@example.com", "10000", "random")
                    await how(conn, runner, uid, slots)
                    found.append([await conn.fetch(q) for q in SAME_ROWS])
            finally:
                await pool.close()
        finally:
            drop_database(name)
    assert found[0] == found[1] and len(found[0][0]) > 10


SAME_ROWS = [
    "SELECT user_id, trade_type, asset, amount, price_usd, total_usd, fee_usd, balance_before, "
    "balance_after, generated_at, is_simulated FROM trades ORDER BY id",
    "SELECT user_id, type, amount, status, reference FROM transactions ORDER BY id",
    "SELECT user_id, scheduled_for, trades_count, outcome FROM sim_runs ORDER BY id",
    "SELECT balance_usd, portfolio_value_usd, sim_run_count FROM users",
    "SELECT asset, at, price_usd, source FROM price_history ORDER BY asset, at",
    "SELECT btc, eth, usdt, usdc, xrp, ada, usd_value FROM portfolio",
]
