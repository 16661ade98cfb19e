"""`simctl bench --steps N`: where a run's CPU goes, statement by statement.

The pipeline (claim_due, then BatchRunner on each lease) runs one batch at a time over N due
users on a single connection, so every statement's cost can be read apart: the server's CPU from
the backend's /proc/<pid>/schedstat (when Postgres runs on this machine) and the client's CPU
around the call (asyncpg encoding and decoding included). What the worker spends outside any
statement is the core and the batch's bookkeeping.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import asyncpg

from simconfig import Settings
from simtools.bench import queries as sql
from simtools.bench.databases import scratch_database
from simtools.bench.procs import BenchError
from simtools.bench.results import Reconcile
from store.db import connect
from store.ledger import reconcile
from store.market import load_market
from store.runs import claim_due
from store.sqlfiles import queries
from workers.batch import BatchRunner

_Totals = defaultdict[str, list[float]]  # name -> [server s, client s, calls]


def _server_cpu_s(pid: int) -> float | None:
    """CPU time of a local backend, in seconds; None if Postgres is not on this machine."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class _Timed:
    """A connection that charges each call's server and client CPU to the query's name."""

    def __init__(self, conn: asyncpg.Connection, totals: _Totals) -> None:
        self._conn = conn
        self._pid = conn.get_server_pid()
        self._totals = totals
        self._names = {text: name for name, text in queries().items()}

    async def timed(self, name: str, call: Callable[[], Any]) -> Any:
        server0, client0 = _server_cpu_s(self._pid), time.thread_time()
        try:
            return await call()
        finally:
            server1, entry = _server_cpu_s(self._pid), self._totals[name]
            if server0 is not None and server1 is not None:
                entry[0] += server1 - server0
            entry[1] += time.thread_time() - client0
            entry[2] += 1

    def _name(self, sql: str) -> str:
        return self._names.get(sql) or " ".join(sql.split())[:40]

    async def fetch(self, sql: str, *args: Any) -> Any:
        return await self.timed(self._name(sql), lambda: self._conn.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self.timed(self._name(sql), lambda: self._conn.fetchrow(sql, *args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.timed(self._name(sql), lambda: self._conn.fetchval(sql, *args))

    async def execute(self, sql: str, *args: Any) -> Any:
        return await self.timed(self._name(sql), lambda: self._conn.execute(sql, *args))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        tx = self._conn.transaction()
        await self.timed("BEGIN", tx.start)
        try:
            yield
        except BaseException:
            await self.timed("ROLLBACK", tx.rollback)
            raise
        await self.timed("COMMIT", tx.commit)


class _OnePool:
    """The one timed connection, handed out the way BatchRunner borrows from a pool."""

    def __init__(self, conn: _Timed) -> None:
        self._conn = conn

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[_Timed]:
        yield self._conn


@dataclass(frozen=True)
class StepCost:
    server_us_per_run: float
    client_us_per_run: float
    calls: int


@dataclass(frozen=True)
class Steps:
    """CPU per run by statement (the costliest on the server first), and the rest."""

    runs: int
    seconds: float
    batch_size: int
    steps: dict[str, StepCost]
    server_us_per_run: float
    worker_outside_statements_us_per_run: float
    reconcile: Reconcile

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def profile_steps(url: str, settings: Settings, say: Callable[[str], None]) -> Steps:
    """Run every due user of the database at `url` once; CPU per run by statement."""
    totals: _Totals = defaultdict(lambda: [0.0, 0.0, 0])
    conn = await connect(url)
    try:
        timed = _Timed(conn, totals)
        market = await load_market(conn, settings)
        runner = BatchRunner(cast(asyncpg.Pool, _OnePool(timed)), settings, market)
        runs = 0
        worker_client_s = 0.0
        started = time.monotonic()
        while True:
            lease = await timed.timed(
                "claim_due",
                lambda: claim_due(
                    conn,
                    settings.sim_batch_size,
                    settings.sim_lease_s,
                    batch_size=settings.sim_batch_size,
                ),
            )
            if not lease.user_ids:
                break
            for batch in lease.batches:
                client0 = time.thread_time()
                outcome = await runner.run(batch.claims, batch.lease_id)
                worker_client_s += time.thread_time() - client0
                runs += len(outcome.applied)
                if runs // 10_000 != (runs - len(outcome.applied)) // 10_000:
                    say(f"steps: {runs} runs")
        seconds = time.monotonic() - started
        found = await reconcile(conn)
    finally:
        await conn.close()
    if runs == 0:
        raise BenchError("steps: no due user to run")
    # The claim is the scheduler's; everything else ran inside the worker's BatchRunner.
    in_statements = sum(v[1] for k, v in totals.items() if k != "claim_due")
    steps = {
        name: StepCost(
            server_us_per_run=round(server / runs * 1e6, 1),
            client_us_per_run=round(client / runs * 1e6, 1),
            calls=int(calls),
        )
        for name, (server, client, calls) in sorted(totals.items(), key=lambda kv: -kv[1][0])
    }
    return Steps(
        runs=runs,
        seconds=round(seconds, 2),
        batch_size=settings.sim_batch_size,
        steps=steps,
        server_us_per_run=round(sum(v[0] for v in totals.values()) / runs * 1e6, 1),
        worker_outside_statements_us_per_run=round(
            (worker_client_s - in_statements) / runs * 1e6, 1
        ),
        reconcile=Reconcile(clean=not found, discrepancies=len(found)),
    )


async def run_steps(settings: Settings, users: int, say: Callable[[str], None]) -> Steps:
    """A scratch database of `users` due users next to DATABASE_URL's, profiled by
    profile_steps from a checkpoint, then dropped."""
    name = f"simbench_{os.getpid()}_steps"
    say(f"steps: {users} due users")
    async with scratch_database(settings.database_url, name, users=users, settings=settings) as url:
        conn = await connect(url)
        try:
            await sql.checkpoint(conn)
        finally:
            await conn.close()
        return await profile_steps(url, settings, say)


def steps_table(result: Steps) -> str:
    lines = [
        f"{result.runs} runs in batches of {result.batch_size}, one at a time "
        f"({result.seconds} s); CPU per run:",
        "",
        "| step | server µs | client µs | calls |",
        "|---|---|---|---|",
    ]
    for name, s in result.steps.items():
        lines.append(f"| {name} | {s.server_us_per_run} | {s.client_us_per_run} | {s.calls} |")
    lines += [
        f"| worker outside statements (core, bookkeeping) | | "
        f"{result.worker_outside_statements_us_per_run} | |",
        f"| **server, all statements** | **{result.server_us_per_run}** | | |",
        "",
        f"reconcile: {'clean' if result.reconcile.clean else 'DISCREPANCIES'}",
    ]
    return "\n".join(lines) + "\n"
