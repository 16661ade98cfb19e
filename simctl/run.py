"""simctl run: make a user due now and enqueue that slot."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

import typer

from simctl.common import err, print_json, run_async, settings


def run(
    user: Annotated[str, typer.Argument(metavar="USER", help="User id or email.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the run and print it.")] = False,
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", min=0.1, help="How long --wait waits.")
    ] = 60.0,
) -> None:
    """Make a user due now and enqueue that slot; the slot still runs at most once.

    Refuses (exit 1) a user who is disabled, paused, deactivated or deleted, and (exit 2) when
    Redis does not answer; a refused run changes nothing. Never sets or extends the user's lease,
    so a job lost earlier still comes back when that lease ends. With --wait, prints the run's
    outcome and trades once a worker has applied it (exit 1 if it does not within the timeout).

    Example:

    \b
      simctl run 42 --wait
    """
    from engine.values import parse_user

    parse_user(user)  # refused before Redis or Postgres is asked anything
    s = settings()

    async def go() -> dict[str, Any] | None:
        from redis.exceptions import RedisError

        from store.db import connection
        from store.errors import Refused
        from store.runs import Claim, deployment_id
        from store.users import make_due_now, resolve_user, run_of_slot
        from workers.enqueue import connect_redis, encode_claims, enqueue_batch, redis_error

        # Redis first: a run refused for want of Redis changes nothing in Postgres.
        redis = await connect_redis(s)
        try:
            async with connection(s.database_url) as conn:
                uid = await resolve_user(conn, user)
                queue: asyncio.Queue[str] = asyncio.Queue()
                await conn.add_listener("sim_run", lambda *a: queue.put_nowait(a[3]))
                slot, lease_until = await make_due_now(conn, uid)
                ids, slots = encode_claims([Claim(uid, slot)])
                deployment = await deployment_id(conn)
                try:
                    await enqueue_batch(
                        redis, s.queue_name(deployment), deployment, ids, slots, None, lease_until
                    )
                except (OSError, RedisError) as exc:
                    # The slot is due now: a scheduler enqueues it once Redis answers (after
                    # the user's lease, if one is live).
                    raise redis_error(s, exc) from None
                err.print(f"user {uid}: slot {slot.isoformat()} enqueued")
                if not wait:
                    return None
                deadline = asyncio.get_running_loop().time() + timeout_s
                while True:
                    found = await run_of_slot(conn, uid, slot)
                    if found is not None:
                        return found
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        raise Refused(
                            f"user {uid}: no run for slot {slot.isoformat()} within {timeout_s} s"
                        )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(queue.get(), min(remaining, 1.0))
        finally:
            await redis.aclose()

    result = run_async(go)
    if result is not None:
        print_json(result)
