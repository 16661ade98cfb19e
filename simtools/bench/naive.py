"""The naive design, kept only as the benchmark's baseline: one arq job and one transaction per
user-run, every row written by its own statement. Same core, same rules, none of the batching.
`python -m simtools.bench.naive` (the bench starts it) runs it in the worker process of
workers/process.py, configured from the environment as `simctl worker` is."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
from arq.connections import RedisSettings

from engine.accounting import UserState, apply_run, run_stream
from engine.assets import ASSETS
from engine.market import Market
from engine.pricing import PriceBook
from engine.strategies import make_strategy
from simconfig import Settings
from simtools.bench.queries import bench_query
from store.fees import load_fees
from store.sqlfiles import query
from workers.codec import CODEC
from workers.jobs import decode_claims

NAIVE_JOB = "naive_run"
NAIVE_MODULE = "simtools.bench.naive"  # `python -m` this: a worker of the naive design


async def naive_run(ctx: dict[str, Any], user_id: int, slot_us: int) -> int:
    """Apply one user's slot, row by row, in its own transaction; returns trades written."""
    settings: Settings = ctx["settings"]
    claim = decode_claims([user_id], [slot_us])[0]
    started = datetime.now(UTC)
    async with ctx["pool"].acquire() as conn, conn.transaction():
        user = await conn.fetchrow(bench_query("naive_lock_user"), user_id)
        if user is None or not user["eligible"] or user["sim_next_run_at"] != claim.slot:
            return 0
        held = await conn.fetchrow(query("holdings_row"), user_id)
        rows = await conn.fetch(bench_query("naive_reserved"), user_id)
        reserved = {r["asset"]: r["amount"] for r in rows}
        fees = ctx.get("fees") or await load_fees(conn)
        ctx["fees"] = fees
        book = PriceBook(ctx["market"], ())
        prices = book.prices_at(claim.slot)
        result = apply_run(
            UserState(user_id, user["balance_usd"], {a: held[a.lower()] for a in ASSETS}, reserved),
            prices,
            fees,
            make_strategy(
                user["sim_strategy"] or settings.sim_default_strategy, user["sim_params"] or {}
            ),
            run_stream(ctx["market"].seed_at(claim.slot), user_id, claim.slot),
            slippage_bps=settings.sim_slippage_bps,
        )
        run_id = await conn.fetchval(
            bench_query("naive_insert_run"), user_id, claim.slot, started, len(result.fills)
        )
        for f in result.fills:
            trade_id = await conn.fetchval(
                bench_query("naive_insert_trade"),
                user_id,
                f.side,
                f.asset,
                f.amount,
                f.price_usd,
                f.total_usd,
                f.fee_usd,
                f.balance_before,
                f.balance_after,
                run_id,
                claim.slot,
            )
            await conn.execute(
                bench_query("naive_insert_transaction"),
                user_id,
                f.side,
                f.delta,
                f"trade:{trade_id}",
            )
        h = result.holdings
        await conn.execute(
            bench_query("naive_update_portfolio"),
            user_id,
            h["BTC"],
            h["ETH"],
            h["USDT"],
            h["USDC"],
            h["XRP"],
            h["ADA"],
            result.value_usd,
        )
        await conn.execute(
            bench_query("naive_update_user"),
            user_id,
            result.balance_usd,
            result.value_usd,
            claim.slot,
        )
        await conn.execute(
            bench_query("naive_notify"),
            f'{{"user_id": {user_id}, "run_id": {run_id}, "scheduled_for": "{claim.slot.isoformat()}", '
            f'"trades_count": {len(result.fills)}}}',
        )
        return len(result.fills)


def naive_worker_settings(settings: Settings, pool: asyncpg.Pool, market: Market) -> dict[str, Any]:
    """arq Worker arguments for the naive job, on the worker process's pool and market (the
    same shape as workers.jobs.worker_settings, which the process takes either of)."""

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["settings"] = settings
        ctx["pool"] = pool
        ctx["market"] = market

    return {
        "functions": [naive_run],
        "queue_name": settings.sim_queue_name,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "on_startup": on_startup,
        "max_jobs": settings.sim_worker_concurrency,
        "keep_result": 0,
        "poll_delay": settings.sim_worker_poll_ms / 1000,
        "log_results": False,
        **CODEC,  # JSON, never pickle
    }


def main() -> None:
    """A worker process of the naive design, until SIGTERM/SIGINT."""
    from simconfig import load_settings
    from workers.logs import configure_logging
    from workers.process import run_worker

    settings = load_settings()
    configure_logging(settings)
    run_worker(settings, jobs=naive_worker_settings)


if __name__ == "__main__":
    main()
