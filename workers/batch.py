"""Apply one batch of claimed slots: lock, fence, compute with the core, write, in one transaction.

A batch that fails is split in halves until the user at fault is alone; that user's failure is
recorded (error, backoff, auto-pause after SIM_MAX_FAILURES) and the others commit.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from engine.accounting import FeeRule, RunResult, UserState, apply_run, run_stream
from engine.errors import SimError
from engine.market import Market
from engine.pricing import ImportSpan, PriceBook
from engine.strategies import MarketView, Strategy, make_strategy
from simconfig import Settings
from store import runs as store
from store.db import Conn, Pool, is_retryable, retrying, translate
from store.errors import first_line
from store.fees import load_fees
from store.market import current_market
from store.runs import Claim, LoadedUser, RunWrite
from workers.logs import get_logger

log = get_logger("simengine.batch")
FEES_TTL_S = 30.0


@dataclass
class BatchOutcome:
    """What happened to each slot of a batch."""

    applied: list[tuple[int, int]] = field(default_factory=list)  # (run_id, user_id)
    skipped: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)  # slot later than Postgres's now()
    failed: list[int] = field(default_factory=list)
    trades: int = 0
    by_asset_side: Counter[tuple[str, str]] = field(default_factory=Counter)
    fees_usd: Decimal = Decimal(0)
    lags_s: list[float] = field(default_factory=list)
    auto_paused: int = 0

    def merge(self, other: BatchOutcome) -> None:
        self.applied += other.applied
        self.skipped += other.skipped
        self.refused += other.refused
        self.failed += other.failed
        self.trades += other.trades
        self.by_asset_side.update(other.by_asset_side)
        self.fees_usd += other.fees_usd
        self.lags_s += other.lags_s
        self.auto_paused += other.auto_paused


class BatchRunner:
    """Runs batches against one pool; built once per worker process."""

    def __init__(
        self,
        pool: Pool,
        settings: Settings,
        market: Market,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.pool = pool
        self.on_retry = on_retry
        self.settings = settings
        self.market = market
        self._fees: dict[str, FeeRule] | None = None
        self._fees_at = 0.0
        self._strategies: dict[tuple[str | None, str], Strategy] = {}

    def _strategy(self, name: str | None, params_json: str) -> Strategy:
        """Strategies are immutable given their parameters, so users sharing them share one
        (keyed by the parameters' jsonb text, which is the same for equal parameters)."""
        key = (name, params_json)
        strategy = self._strategies.get(key)
        if strategy is None:
            params = json.loads(params_json)
            strategy = make_strategy(
                name or self.settings.sim_default_strategy,
                params if isinstance(params, dict) else {},
                max_trades=self.settings.sim_max_trades_per_run,
            )
            if len(self._strategies) > 10_000:
                self._strategies.clear()
            self._strategies[key] = strategy
        return strategy

    async def fees(self, conn: Conn) -> dict[str, FeeRule]:
        """fee_config, read again every FEES_TTL_S so a changed fee applies without a restart."""
        now = time.monotonic()
        if self._fees is None or now - self._fees_at > FEES_TTL_S:
            self._fees, self._fees_at = await load_fees(conn), now
        return self._fees

    async def run(self, claims: Sequence[Claim], lease_id: int | None = None) -> BatchOutcome:
        """Apply a batch and give back its lease (`lease_id`, the claim's sim_leases row) in
        the same transaction; never raises for a bad user, only for an unavailable database.
        A split batch gives the lease back with its first half that commits: the rest may then
        be claimed again before this job reaches it, and the duplicate is fenced off."""
        claims = sorted(claims, key=lambda c: c.user_id)
        try:
            return await retrying(lambda: self._attempt(claims, lease_id), on_retry=self.on_retry)
        except Exception as exc:  # split on anything, so one bad user cannot block the others
            if is_retryable(exc):
                raise translate(exc) from exc
            if len(claims) == 1:
                return await self._fail_one(claims[0].user_id, _describe(exc))
            mid = len(claims) // 2
            log.warning("batch.split", users=len(claims), error=_describe(exc), exc_info=exc)
            outcome = await self.run(claims[:mid], lease_id)
            outcome.merge(await self.run(claims[mid:], lease_id))
            return outcome

    async def _attempt(self, claims: Sequence[Claim], lease_id: int | None) -> BatchOutcome:
        outcome = BatchOutcome()
        started_at = datetime.now(UTC)
        async with self.pool.acquire() as conn, conn.transaction():
            start = await store.begin_batch(conn)
            self.market = await current_market(conn, self.market, start.market_version)
            rows = await store.lock_batch(conn, [c.user_id for c in claims])
            slot_of = {c.user_id: c.slot for c in claims}
            # Runs happen when due, and only then: a slot later than this transaction's now()
            # (Postgres's clock, the one claims compared the slot with) writes nothing, whoever
            # enqueued it. No allowance for skew: a claimed slot was due at the claim's now(),
            # which committed before this transaction began, on the same clock.
            outcome.refused = sorted(uid for uid, slot in slot_of.items() if slot > start.now)
            for uid in outcome.refused:
                log.warning(
                    "run.refused_not_due",
                    user_id=uid,
                    slot=slot_of[uid].isoformat(),
                    db_now=start.now.isoformat(),
                )
            # The fence: a stale, duplicate or no-longer-eligible job writes nothing.
            due = [
                u
                for u in rows
                if u.eligible
                and u.next_run_at == slot_of[u.user_id]
                and slot_of[u.user_id] <= start.now
            ]
            outcome.skipped = sorted(set(slot_of) - {u.user_id for u in due} - set(outcome.refused))
            if not due:
                await store.release_lease(conn, lease_id)
                return outcome
            missing = [u.user_id for u in due if not u.has_portfolio]
            await store.ensure_portfolios(conn, missing)
            book = PriceBook(
                self.market, (ImportSpan(s.asset, s.first_at, s.last_at) for s in start.spans)
            )
            strategies: dict[int, Strategy | SimError] = {}
            times: set[datetime] = set()
            for user in due:
                slot = slot_of[user.user_id]
                times.add(slot)
                try:
                    strategy = self._strategy(user.strategy, user.params_json)
                except SimError as exc:
                    strategies[user.user_id] = exc
                    continue
                strategies[user.user_id] = strategy
                if strategy.lookback:
                    times.add(
                        slot - timedelta(seconds=strategy.lookback * self.market.params.tick_s)
                    )
            book.add_imported(await store.imported_prices(conn, book.import_points(times)))
            fees = await self.fees(conn)
            writes: list[RunWrite] = []
            failures: list[tuple[LoadedUser, str]] = []
            for user in due:
                strategy_or_error = strategies[user.user_id]
                try:
                    if isinstance(strategy_or_error, SimError):
                        raise strategy_or_error
                    result = self._compute(
                        user, slot_of[user.user_id], strategy_or_error, book, fees
                    )
                except (SimError, KeyError) as exc:
                    failures.append((user, _describe(exc)))
                    continue
                writes.append(RunWrite(slot_of[user.user_id], result))
                outcome.trades += len(result.fills)
                outcome.lags_s.append((started_at - slot_of[user.user_id]).total_seconds())
                for fill in result.fills:
                    outcome.by_asset_side[(fill.asset, fill.side)] += 1
                    outcome.fees_usd += fill.fee_usd
            outcome.applied = await store.apply_batch(
                conn, writes, started_at, book.model_rows(), lease_id
            )
            for user, error in failures:
                outcome.auto_paused += await self._record_failure(conn, user.user_id, error)
                outcome.failed.append(user.user_id)
        return outcome

    def _compute(
        self,
        user: LoadedUser,
        slot: datetime,
        strategy: Strategy,
        book: PriceBook,
        fees: dict[str, FeeRule],
    ) -> RunResult:
        state = UserState(user.user_id, user.balance_usd, user.holdings, user.reserved)
        return apply_run(
            state,
            book.prices_at(slot),
            fees,
            strategy,
            run_stream(self.market.seed_at(slot), user.user_id, slot),
            slippage_bps=self.settings.sim_slippage_bps,
            market=self._view(book, slot) if strategy.lookback else None,
        )

    def _view(self, book: PriceBook, slot: datetime) -> MarketView:
        """Prices at the slot and, for strategies that look back, the ticks before it."""
        tick_s = self.market.params.tick_s

        def history(asset: str, ticks_back: int) -> Decimal:
            return book.price(asset, slot - timedelta(seconds=ticks_back * tick_s))

        return MarketView(prices=book.prices_at(slot), history=history)

    async def _fail_one(self, user_id: int, error: str) -> BatchOutcome:
        async def record() -> int:
            async with self.pool.acquire() as conn, conn.transaction():
                return await self._record_failure(conn, user_id, error)

        paused = await retrying(record, on_retry=self.on_retry)
        return BatchOutcome(failed=[user_id], auto_paused=paused)

    async def _record_failure(self, conn: Conn, user_id: int, error: str) -> int:
        """Record a failed attempt; returns 1 if it auto-paused the user, else 0."""
        failures, paused = await store.record_failure(
            conn, user_id, error, self.settings.sim_retry_base_s, self.settings.sim_max_failures
        )
        log.warning("run.failed", user_id=user_id, failures=failures, error=error)
        if paused and failures == self.settings.sim_max_failures:
            await store.audit(
                conn, "engine", "auto_pause", user_id, {"failures": failures, "last_error": error}
            )
            log.warning("user.auto_paused", user_id=user_id, failures=failures)
            return 1
        return 0


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"
