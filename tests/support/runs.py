"""Many runs of one user, fast: the core computes each slot from the state the previous one left
(as the worker would), and the runs are written by the pipeline's own statement (apply_batch),
pipelined with executemany in one transaction. The scheduler, the queue and the per-batch
locking and fencing are left out; `drive` goes through the whole batch code instead."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from engine.pricing import ImportSpan, PriceBook
from store.db import Conn
from store.fees import load_fees
from store.runs import (
    Claim,
    RunWrite,
    batch_args,
    batch_prelude,
    ensure_portfolios,
    imported_prices,
    lock_batch,
)
from store.sqlfiles import query
from workers.batch import BatchRunner


async def drive(pg: Conn, runner: BatchRunner, user_id: int, slots: list[datetime]) -> None:
    """Run `slots` of one user, oldest first, through the batch code (lock, fence, core, write):
    each slot is made the user's due slot, then applied as a worker applies a job."""
    for slot in slots:
        await pg.execute("UPDATE users SET sim_next_run_at = $2 WHERE id = $1", user_id, slot)
        outcome = await runner.run([Claim(user_id, slot)])
        assert outcome.applied, outcome


async def fast_forward(pg: Conn, runner: BatchRunner, user_id: int, slots: list[datetime]) -> None:
    """Apply `slots` of one user, oldest first, in one transaction (see the module's doc)."""
    async with pg.transaction():
        spans = await batch_prelude(pg)
        [user] = await lock_batch(pg, [user_id])
        await ensure_portfolios(pg, [user_id])
        book = PriceBook(runner.market, (ImportSpan(s.asset, s.first_at, s.last_at) for s in spans))
        book.add_imported(await imported_prices(pg, book.import_points(slots)))
        fees = await load_fees(pg)
        strategy = runner._strategy(user.strategy, user.params_json)
        args: list[list[Any]] = []
        started_at = datetime.now(UTC)
        for slot in slots:
            result = runner._compute(user, slot, strategy, book, fees)
            args.append(batch_args([RunWrite(slot, result)], started_at, []))
            user = user._replace(balance_usd=result.balance_usd, holdings=result.holdings)
        # The model ticks the runs used, stored once with the last run (idempotent per tick).
        args[-1] = batch_args([RunWrite(slots[-1], result)], started_at, book.model_rows())
        await pg.executemany(query("apply_batch"), args)
