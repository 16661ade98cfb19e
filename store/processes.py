"""The processes' heartbeats (migration 0013's sim_processes): which schedulers, workers and
consoles run, seen by the console's overview and `simctl status`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from store.db import Conn
from store.sqlfiles import query

Kind = Literal["scheduler", "worker", "console"]

# How often a process beats (workers/heartbeat.py), and how long unseen before it shows as gone
# (several missed beats: a process busy for a moment is not reported dead).
BEAT_S = 5.0
GONE_AFTER_S = 30.0
# Rows unseen this long are deleted by the scheduler (dead processes' rows, kept a day to see).
FORGET_AFTER_S = 86_400.0


@dataclass(frozen=True, slots=True)
class Process:
    """One process's identity: its row's primary key is (host, pid, started_at)."""

    kind: Kind
    host: str
    pid: int
    started_at: datetime
    version: str | None = None
    queue: str | None = None


async def beat(conn: Conn, proc: Process) -> None:
    """Insert or refresh the process's row (seen_at = the server's now())."""
    await conn.execute(
        query("beat", "processes.sql"),
        proc.host,
        proc.pid,
        proc.started_at,
        proc.kind,
        proc.version,
        proc.queue,
    )


async def leave(conn: Conn, proc: Process) -> None:
    """Delete the process's row (a clean stop)."""
    await conn.execute(query("leave", "processes.sql"), proc.host, proc.pid, proc.started_at)


async def forget(conn: Conn, after_s: float = FORGET_AFTER_S) -> int:
    """Delete the rows not seen for `after_s` seconds; how many."""
    done = await conn.execute(query("forget", "processes.sql"), after_s)
    return int(done.split()[-1])


async def seen(conn: Conn, gone_after_s: float = GONE_AFTER_S) -> list[dict[str, Any]]:
    """Every process on record (kind, host, pid, started_at, seen_at, seen_s_ago, gone,
    version, queue), by kind and newest start first."""
    rows = await conn.fetch(query("seen", "processes.sql"), gone_after_s)
    return [dict(r.items()) for r in rows]
