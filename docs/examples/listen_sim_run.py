"""Listen to simengine's `sim_run` notifications: one JSON payload per committed run.

    DATABASE_URL=postgresql://reader@127.0.0.1/db python docs/examples/listen_sim_run.py --count 5

Any role may LISTEN; the reader role made by `simctl grant-reader` is enough. Notifications are
sent at commit, so a payload always names a run that exists. A listener that was disconnected
misses what was sent meanwhile: catch up from the sim_activity view or sim_runs by id.
"""

import argparse
import asyncio
import json
import os

import asyncpg


async def main(count: int) -> None:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    received: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    await conn.add_listener(
        "sim_run", lambda _c, _pid, _chan, payload: received.put_nowait(json.loads(payload))
    )
    print("listening", flush=True)
    try:
        for _ in range(count):
            run = await received.get()
            # Keys: user_id, run_id, scheduled_for (ISO 8601, UTC), trades_count.
            print(json.dumps(run), flush=True)
    finally:
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="stop after this many runs")
    asyncio.run(main(parser.parse_args().count))
