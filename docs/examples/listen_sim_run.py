"""Listen to simengine's `sim_run` notifications: one JSON payload per committed run, checked.

    DATABASE_URL=postgresql://reader@127.0.0.1/db python docs/examples/listen_sim_run.py --count 5

Any role may LISTEN; the reader role made by `simctl grant-reader` is enough. Any role may also
NOTIFY on any channel (Postgres cannot restrict it), so a payload is only a hint: this listener
trusts a run once the sim_run_log view shows it with the same user, slot and trade count, and
reports any other payload as ignored on stderr. A genuine payload sent again (any role can replay
one it saw) names a run already handled: it is refused as a replay, by run id. A listener that
was disconnected misses what was sent meanwhile: catch up from sim_run_log by run_id on
reconnect.
"""

import argparse
import asyncio
import json
import os
import sys
from collections import deque
from datetime import datetime

import asyncpg


async def verified(conn: asyncpg.Connection, payload: str) -> dict[str, object] | None:
    """The payload as a dict if it names a committed run exactly, else None."""
    try:
        run = json.loads(payload)
        run_id, user_id = int(run["run_id"]), int(run["user_id"])
        slot = datetime.fromisoformat(str(run["scheduled_for"]).replace("Z", "+00:00"))
        trades = int(run["trades_count"])
    except (ValueError, KeyError, TypeError):
        return None
    found = await conn.fetchval(
        "SELECT true FROM sim_run_log WHERE run_id = $1 AND user_id = $2"
        " AND scheduled_for = $3 AND trades_count = $4",
        run_id,
        user_id,
        slot,
        trades,
    )
    return run if found else None


class Handled:
    """The run ids this listener has acted on: the latest `size` of them, and every id at or
    below the newest one forgotten (runs commit within seconds of their id being drawn, so an
    id that old is a replay, not a late run)."""

    def __init__(self, size: int = 100_000) -> None:
        self.ids: set[int] = set()
        self.order: deque[int] = deque()
        self.size = size
        self.forgotten = 0

    def seen(self, run_id: int) -> bool:
        return run_id in self.ids or run_id <= self.forgotten

    def add(self, run_id: int) -> None:
        self.ids.add(run_id)
        self.order.append(run_id)
        if len(self.order) > self.size:
            old = self.order.popleft()
            self.ids.discard(old)
            self.forgotten = max(self.forgotten, old)


async def main(count: int) -> None:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    check = await asyncpg.connect(os.environ["DATABASE_URL"])
    received: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener(
        "sim_run", lambda _c, _pid, _chan, payload: received.put_nowait(payload)
    )
    print("listening", flush=True)
    try:
        trusted = 0
        handled = Handled()
        while trusted < count:
            payload = await received.get()
            run = await verified(check, payload)
            if run is None:
                print(f"ignored: {payload[:200]!r} (no such run in sim_run_log)", file=sys.stderr)
                continue
            if handled.seen(int(str(run["run_id"]))):
                print(f"ignored: run {run['run_id']} again (a replay)", file=sys.stderr)
                continue
            handled.add(int(str(run["run_id"])))
            # Keys: user_id, run_id, scheduled_for (ISO 8601, UTC), trades_count.
            print(json.dumps(run), flush=True)
            trusted += 1
    finally:
        await conn.close()
        await check.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="stop after this many runs")
    asyncio.run(main(parser.parse_args().count))
