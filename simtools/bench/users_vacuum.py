"""How the claim behaves as dead row versions build up on `users`, with autovacuum on.

`python -m simtools.bench.users_vacuum [--users N] [--seconds S] [--interval-s I] [--backlog]`
starts a private cluster (autovacuum on with the server's defaults, as a production server
has) and, for each setting compared, makes a fresh database (`migrate`) with N eligible users
whose slots come due at N / I per second (or all at once with --backlog), then loops as a
scheduler and its workers would: the real claim (`store.runs.claim_due`, up to 1,000 users in
batches of 200; 0.1 s pause when it found fewer), then each claimed user's row updated exactly
as `apply_batch` updates `users` (balance, value, last run, run count, next slot: a new
`sim_next_run_at`, so never HOT) and the leases deleted; sim_leases is vacuumed every second
as the scheduler does. Nothing else is written (no trades, ledger or portfolio): only `users`
is measured. Every 10 s it prints updates/s, the claim's median and max ms, its median per
1,000 users claimed, `n_dead_tup`, autovacuum runs, and the sizes of users and its due index.

Settings compared: the server's defaults, and the per-table settings migration 0011 sets.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from simconfig import Settings
from simtools.harness.services import PrivateCluster
from store.db import connect
from store.market import ensure_market
from store.migrate import migrate
from store.runs import claim_due, vacuum_leases

TUNED = (
    "ALTER TABLE users SET (autovacuum_vacuum_scale_factor = 0.01, "
    "autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02)"
)
DEFAULT = (
    "ALTER TABLE users RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, "
    "autovacuum_analyze_scale_factor)"
)
SETTINGS = {"default": DEFAULT, "tuned": TUNED}

APPLY_USERS = """
WITH done AS (
    UPDATE users u
       SET balance_usd = u.balance_usd, portfolio_value_usd = u.portfolio_value_usd,
           sim_last_run_at = now(), sim_run_count = u.sim_run_count + 1, updated_at = now(),
           sim_next_run_at = CASE
               WHEN u.sim_next_run_at + make_interval(secs => u.sim_interval_s) < now()
               THEN now() + make_interval(secs => u.sim_interval_s)
               ELSE u.sim_next_run_at + make_interval(secs => u.sim_interval_s) END,
           sim_claimed_until = NULL, sim_fail_count = 0, sim_last_error = NULL
     WHERE u.id = ANY($1::bigint[])
    RETURNING 1
)
DELETE FROM sim_leases WHERE id = ANY($2::bigint[])
"""

STATS = """
SELECT n_dead_tup, n_live_tup, autovacuum_count, pg_relation_size('users') AS heap,
       pg_relation_size('idx_users_sim_due') AS due_index
  FROM pg_stat_user_tables WHERE relname = 'users'
"""


async def one(cluster: PrivateCluster, name: str, alter: str, args: argparse.Namespace) -> None:
    admin = await connect(cluster.url())
    await admin.execute(f"CREATE DATABASE av_{name}")
    await admin.close()
    conn = await connect(cluster.url(f"av_{name}"))
    await migrate(conn)  # 0011 sets the tuned settings; "default" resets them below
    await ensure_market(conn, Settings(_env_file=None, sim_seed=1))
    await conn.execute(alter)
    await conn.execute(
        "INSERT INTO users (email, balance_usd, sim_enabled, sim_interval_s, sim_next_run_at) "
        "SELECT 'u' || g || '@example.com', 1000, true, $2::int, "
        "now() + make_interval(secs => $2::int * random() * $3::int) "
        "FROM generate_series(1, $1::int) g",
        args.users,
        args.interval_s,
        -1 if args.backlog else 1,
    )
    await conn.execute("VACUUM ANALYZE users")
    print(f"-- {name}: {alter}", flush=True)
    print(
        "t_s  updates/s  claim_ms(median)  claim_ms(max)  claim_ms/1000(median)  n_dead_tup  "
        "autovacuums  heap_MB  due_idx_MB"
    )
    start = time.monotonic()
    next_report = start + 10
    window: list[float] = []
    raw: list[float] = []
    updates = 0
    leases_vacuumed = start
    while time.monotonic() - start < args.seconds:
        t0 = time.perf_counter()
        lease = await claim_due(conn, 1000, 60, 200)
        claim_ms = (time.perf_counter() - t0) * 1000
        raw.append(claim_ms)
        if lease.user_ids:
            window.append(claim_ms * 1000 / len(lease.user_ids))
            ids = [b.lease_id for b in lease.batches]
            async with conn.transaction():
                await conn.execute(APPLY_USERS, lease.user_ids, ids)
            updates += len(lease.user_ids)
            if time.monotonic() - leases_vacuumed >= 1.0:  # as the scheduler does
                await vacuum_leases(conn)
                leases_vacuumed = time.monotonic()
        if len(lease.user_ids) < 1000:
            await asyncio.sleep(0.1)  # caught up: the next claim a scheduler pass later
        if time.monotonic() >= next_report:
            s = await conn.fetchrow(STATS)
            assert s is not None
            print(
                f"{time.monotonic() - start:4.0f}  {updates / 10:9.0f}  "
                f"{statistics.median(raw):16.1f}  {max(raw):13.1f}  "
                f"{statistics.median(window) if window else float('nan'):21.1f}  "
                f"{s['n_dead_tup']:10d}  {s['autovacuum_count']:11d}  "
                f"{s['heap'] / 2**20:7.1f}  {s['due_index'] / 2**20:10.1f}",
                flush=True,
            )
            window, raw, updates = [], [], 0
            next_report += 10
    await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--seconds", type=int, default=240)
    parser.add_argument("--interval-s", type=int, default=20)
    parser.add_argument("--only", choices=sorted(SETTINGS), default=None)
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="All users due at the start (slots spread over the last interval): back to back, "
        "as fast as the loop goes. Default: slots spread over the next interval, so users come "
        "due at users/interval per second, as on a platform at that rate.",
    )
    args = parser.parse_args()
    cluster = PrivateCluster({"log_autovacuum_min_duration": "0", "synchronous_commit": "off"})
    cluster.init()
    try:
        cluster.start()
        for name, alter in SETTINGS.items():
            if args.only in (None, name):
                await one(cluster, name, alter, args)
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
