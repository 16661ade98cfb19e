"""What the history bench measures at a point in history: a simctl command's wall time and the
longest transaction its backends held (pg_stat_activity sampled from a side connection), status
above process start, the full sim_pnl sum, table sizes, and the scheduler's claim times and own
checkpoints read from its log."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from simtools.harness.procs import simctl_argv, with_app_name
from simtools.harness.sqlfiles import query_file
from store.db import Conn, connect

history_query = query_file("simtools.bench", "history.sql")

SAMPLE_S = 0.1  # how often the side connection looks at the timed command's transactions


@dataclass(frozen=True)
class Timed:
    """One simctl command: wall time, exit code, the longest transaction any of its backends held
    (seen every SAMPLE_S, so short by up to that much; 0.0 when none lasted a sample) and the
    statement it was running when last seen, how many transactions were seen, and its --json
    output when it gave one."""

    seconds: float
    exit_code: int
    longest_transaction_s: float
    transactions_seen: int
    longest_statement: str = ""  # the longest transaction's statement when last sampled
    output: Any = None
    stderr: str = ""  # its last line on stderr (a refusal's reason)


async def timed_simctl(
    args: Sequence[str],
    env: dict[str, str],
    url: str,
    app: str,
    *,
    timeout_s: float = 7200,
) -> Timed:
    """Run `simctl ARGS` against the database at `url` (its connections named `app`) while a side
    connection samples pg_stat_activity for their open transactions every SAMPLE_S. Its --json output
    is kept, compacted (`compact`)."""
    side = await connect(url)
    held: dict[tuple[int, datetime], float] = {}
    doing: dict[tuple[int, datetime], str] = {}  # its statement when last seen
    try:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *simctl_argv(*args),
            env={**env, "DATABASE_URL": with_app_name(url, app)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        communicate = asyncio.ensure_future(proc.communicate())
        try:
            while not communicate.done():
                for row in await side.fetch(history_query("hist_transactions_of"), app):
                    key = (row["pid"], row["xact_start"])
                    if row["held_s"] >= held.get(key, 0.0):
                        held[key] = row["held_s"]
                        doing[key] = row["query"]
                if time.monotonic() - started > timeout_s:
                    proc.kill()
                    break
                await asyncio.wait({communicate}, timeout=SAMPLE_S)
            stdout, stderr = await communicate
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        seconds = time.monotonic() - started
    finally:
        await side.close()
    try:
        output: Any = compact(json.loads(stdout.decode("utf-8", errors="replace")))
    except ValueError:
        output = None
    longest = max(held, key=lambda k: held[k], default=None)
    return Timed(
        seconds=round(seconds, 3),
        exit_code=proc.returncode if proc.returncode is not None else -1,
        longest_transaction_s=round(held[longest], 3) if longest else 0.0,
        transactions_seen=len(held),
        longest_statement=doing.get(longest, "") if longest else "",
        output=output,
        stderr=_last_line(stderr.decode("utf-8", errors="replace")),
    )


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:300] if lines else ""


def compact(value: Any) -> Any:
    """A command's --json output with every list replaced by its length: a reconcile may name
    thousands of discrepancies; the bench keeps how many, and every figure."""
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return len(value)
    return value


def scheduler_events(log: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """The scheduler's JSON log events named `names` (e.g. checkpoint.not_taken), each as
    {event, timestamp, error or problems}."""
    out: list[dict[str, Any]] = []
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        if not any(f'"{n}"' in line for n in names):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") in names:
            out.append(
                {
                    "event": event["event"],
                    "timestamp": event.get("timestamp"),
                    "error": str(event.get("error") or event.get("problems") or "")[:300],
                    # The driver's own words (a deadlock's DETAIL names the statements).
                    "detail": " | ".join(
                        str(e.get("exc_value", ""))[:600]
                        for e in event.get("exception", [])
                        if isinstance(e, dict)
                    ),
                }
            )
    return out


def _wall_s(args: Sequence[str], env: dict[str, str]) -> tuple[float, int]:
    import subprocess

    started = time.monotonic()
    done = subprocess.run(
        simctl_argv(*args), env=env, capture_output=True, timeout=600, check=False
    )
    return time.monotonic() - started, done.returncode


@dataclass(frozen=True)
class StatusTime:
    """`simctl status --json` wall time, `simctl --help`'s (the process start: interpreter,
    imports, settings), and the difference: what status itself costs (medians of `runs`)."""

    status_s: float
    process_start_s: float
    above_start_s: float
    exit_code: int


async def status_time(env: dict[str, str], url: str, runs: int = 3) -> StatusTime:
    env = {**env, "DATABASE_URL": url}
    status: list[float] = []
    start: list[float] = []
    code = 0
    for _ in range(runs):
        s, code = await asyncio.to_thread(_wall_s, ["status", "--json"], env)
        status.append(s)
        h, _ = await asyncio.to_thread(_wall_s, ["--help"], env)
        start.append(h)
    st, hs = round(statistics.median(status), 3), round(statistics.median(start), 3)
    return StatusTime(st, hs, round(st - hs, 3), code)


async def pnl_sum_s(conn: Conn) -> float:
    started = time.monotonic()
    await conn.fetchval(history_query("hist_pnl_sum"))
    return round(time.monotonic() - started, 3)


async def table_sizes(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch(history_query("hist_table_sizes"))
    return {r["name"]: int(r["bytes"]) for r in rows}


HISTORY_TABLES = ("trades", "transactions", "sim_runs")


def history_bytes(sizes: dict[str, int]) -> int:
    """The append-only part: what grows with the runs written, and what retention bounds."""
    return sum(sizes.get(t, 0) for t in HISTORY_TABLES)


@dataclass(frozen=True)
class ClaimStats:
    """The scheduler's claims over a span, from its `scheduler.pass` log lines (each pass logs
    the claim_ms of its claims and the users claimed): per pass, median and p95 (ms); per 1,000
    users claimed (ms); passes seen."""

    passes: int
    median_ms: float | None
    p95_ms: float | None
    ms_per_1000_users: float | None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def claim_stats(log: Path, since: float, until: float) -> ClaimStats:
    """Claims logged between two host times (time.time()) in the scheduler's JSON log."""
    ms: list[float] = []
    users = 0
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        if '"scheduler.pass"' not in line:
            continue
        try:
            event = json.loads(line)
            at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        if since <= at < until:
            ms.append(float(event["claim_ms"]))
            users += int(event["claimed"])
    return ClaimStats(
        passes=len(ms),
        median_ms=round(statistics.median(ms), 2) if ms else None,
        p95_ms=_percentile(ms, 0.95),
        ms_per_1000_users=round(sum(ms) / users * 1000, 2) if users else None,
    )


@dataclass(frozen=True)
class CheckpointStats:
    """The scheduler's own checkpoints over a span, from its `checkpoint.verified` log lines
    (each names the window's rows per table, its seconds and its longest transaction): how many,
    median and max seconds, median and max rows (all tables of the window together), and the
    longest transaction any of them held."""

    count: int
    median_s: float | None
    max_s: float | None
    median_rows: int | None
    max_rows: int | None
    longest_tx_max_s: float | None


def checkpoint_stats(log: Path, since: float, until: float) -> CheckpointStats:
    """The scheduler's verified checkpoints logged between two host times (time.time())."""
    seconds: list[float] = []
    rows: list[int] = []
    longest: list[float] = []
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        if '"checkpoint.verified"' not in line:
            continue
        try:
            event = json.loads(line)
            at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
            if event.get("event") != "checkpoint.verified" or not since <= at < until:
                continue
            window = event.get("rows") or {}
            n = sum(int(v) for v in window.values()) if isinstance(window, dict) else int(window)
            took, tx = float(event["seconds"]), float(event.get("longest_tx_s") or 0.0)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        seconds.append(took)
        rows.append(n)
        longest.append(tx)
    return CheckpointStats(
        count=len(seconds),
        median_s=round(statistics.median(seconds), 3) if seconds else None,
        max_s=round(max(seconds), 3) if seconds else None,
        median_rows=round(statistics.median(rows)) if rows else None,
        max_rows=max(rows) if rows else None,
        longest_tx_max_s=round(max(longest), 3) if longest else None,
    )


async def runs_taken(conn: Conn) -> int:
    n: int = await conn.fetchval(history_query("hist_runs_taken"))
    return n


async def clock(conn: Conn) -> datetime:
    at: datetime = await conn.fetchval(history_query("hist_clock"))
    return at


async def counts(conn: Conn) -> dict[str, int]:
    row = await conn.fetchrow(history_query("hist_counts"))
    assert row is not None
    return {k: int(row[k]) for k in ("runs", "trades", "ledger_rows")}


async def users_dead(conn: Conn) -> dict[str, int]:
    row = await conn.fetchrow(history_query("hist_users_dead"))
    return {"dead": 0, "live": 0, "autovacuums": 0} if row is None else dict(row)


async def copy_wallets(source: Conn, target: Conn) -> int:
    """Give `target`'s users (the same seeded users: ids and emails) the wallets `source`'s hold:
    balance, value and holdings, in one transaction. A run's trades follow from its wallet (a
    sell needs a holding), so an empty database beside the history runs the same trades only
    with the history's wallets. Returns the users copied; raises if any did not match."""
    rows = await source.fetch(history_query("hist_wallets"))
    async with target.transaction():
        await target.execute(history_query("hist_wallets_table"))
        await target.copy_records_to_table("hist_wallets", records=[tuple(r) for r in rows])
        done = await target.fetchrow(history_query("hist_take_wallets"))
        assert done is not None
        if not done["users"] == done["portfolios"] == len(rows):
            raise ValueError(
                f"the wallets of {len(rows):,} users matched {done['users']:,} users and "
                f"{done['portfolios']:,} portfolios by id and email: not the same users"
            )
    return len(rows)
