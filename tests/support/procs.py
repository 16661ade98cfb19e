"""Real processes for the tests: simctl subprocesses (the harness's) and waiting on conditions,
never on time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import asyncpg

from simtools.harness import procs as harness
from simtools.harness.procs import run_simctl as simctl
from simtools.harness.procs import simctl_argv
from store.seed import seed_demo

__all__ = ["SIMCTL", "Proc", "simctl", "spawn", "stop", "stop_when_done", "wait_until"]

SIMCTL = simctl_argv()


class Proc(harness.Proc):
    """A long-running simctl process in its own session, its stderr in a temporary file."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        fd, path = tempfile.mkstemp(prefix="simctl-", suffix=".log")
        os.close(fd)
        super().__init__(simctl_argv(*args), env, log=Path(path), new_session=True)

    def close(self) -> None:
        if self.log is not None:
            self.log.unlink(missing_ok=True)


def spawn(args: Sequence[str], env: dict[str, str]) -> Proc:
    """Start a long-running simctl process in its own session."""
    return Proc(args, env)


def stop(proc: Proc, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Signal a process and wait for it to exit; SIGKILL if it overstays. Returns its exit code."""
    [code] = harness.stop([proc], sig, timeout)
    if code not in (0, -signal.SIGKILL):
        print(proc.output())  # shown by pytest when the test fails
    proc.close()
    return code


def stop_when_done(proc: Proc, limit_s: float = 120) -> int:
    """Wait for a process that ends by itself (e.g. `worker --burst`); its exit code."""
    try:
        proc.popen.wait(limit_s)
    except subprocess.TimeoutExpired:
        return stop(proc, signal.SIGKILL)
    return stop(proc)


async def wait_until(
    check: Callable[[], Awaitable[bool]], limit_s: float = 60, what: str = "condition"
) -> None:
    """Poll a condition (every 50 ms) until it holds; fail naming it after `limit_s` seconds."""
    deadline = time.monotonic() + limit_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        await asyncio.sleep(0.05)


async def seed_due(
    conn: asyncpg.Connection,
    users: int,
    slot: datetime | None = None,
    seed: int = 3,
    holdings: bool = True,
) -> None:
    """`users` demo users, all due at `slot` (default: one minute ago), some holding crypto."""
    await seed_demo(conn, users, seed)
    if slot is None:
        await conn.execute("UPDATE users SET sim_next_run_at = now() - interval '1 minute'")
    else:
        await conn.execute("UPDATE users SET sim_next_run_at = $1", slot)
    if holdings:
        # Crypto explained by audited adjustments, so the ledger still reconciles.
        await conn.execute(
            """WITH h AS (UPDATE portfolio SET btc = 0.05, eth = 1.5, ada = 1000
                          WHERE user_id % 2 = 0 RETURNING user_id)
               INSERT INTO admin_audit (admin_key, action, target_user_id, details)
               SELECT 'test', 'adjust_holding', user_id, jsonb_build_object('asset', a, 'delta', d)
                 FROM h, (VALUES ('BTC', '0.05'), ('ETH', '1.5'), ('ADA', '1000')) v(a, d)"""
        )


async def run_counts(conn: asyncpg.Connection) -> tuple[int, int]:
    """(sim_runs rows, distinct (user, slot) pairs)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT (user_id, scheduled_for)) AS d FROM sim_runs"
    )
    assert row is not None
    return row["n"], row["d"]


async def no_partial_runs(conn: asyncpg.Connection) -> None:
    """Every run's trades and ledger rows are all there, and nothing exists without its run."""
    bad = await conn.fetchval(
        """SELECT count(*) FROM sim_runs r
             LEFT JOIN (SELECT sim_run_id, count(*) AS n FROM trades GROUP BY sim_run_id) t
                    ON t.sim_run_id = r.id
            WHERE r.trades_count <> coalesce(t.n, 0)"""
    )
    assert bad == 0
    orphans = await conn.fetchval(
        """SELECT count(*) FROM trades t WHERE t.is_simulated AND (t.sim_run_id IS NULL OR NOT EXISTS
             (SELECT 1 FROM transactions x WHERE x.reference = 'trade:' || t.id
                AND x.amount = t.balance_after - t.balance_before))"""
    )
    assert orphans == 0
    unadvanced = await conn.fetchval(
        """SELECT count(*) FROM users u WHERE sim_run_count <> (SELECT count(*) FROM sim_runs r
             WHERE r.user_id = u.id)"""
    )
    assert unadvanced == 0


ZERO = Decimal(0)


async def refusal_state(pg: asyncpg.Connection) -> tuple[object, ...]:
    """What a refused command must leave as it was."""
    row = await pg.fetchrow(
        """SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM transactions),
                  (SELECT count(*) FROM admin_audit), (SELECT count(*) FROM withdrawals),
                  (SELECT sum(balance_usd) FROM users), (SELECT count(*) FROM price_history)"""
    )
    assert row is not None
    return tuple(row)
