"""How the claim behaves as dead row versions build up on `users`, with autovacuum on.

`python -m simtools.bench.users_vacuum [--users N] [--seconds S] [--interval-s I]` starts a
private cluster (autovacuum on with the server defaults, as a production server has), and for
each setting below makes a fresh database (`migrate`), creates N eligible users all due, then
runs back to back: the real claim (`store.runs.claim_due`, 1,000 users in batches of 200),
then each claimed user's row update
(and sim_leases vacuumed every second, as the scheduler does) exactly as `apply_batch` writes `users` (balance, value,
last run, run count, next slot: a new `sim_next_run_at`, so never HOT) and the lease deleted.
Nothing else is written (no trades, ledger or portfolio): only `users` is measured. Every 10 s
it prints the claim's median ms per 1,000 users, updates/s, `n_dead_tup` and autovacuum runs.

Settings compared: the server defaults, and the per-table settings migration 0011 sets.
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
    "autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02, "
    "autovacuum_vacuum_cost_limit = 2000)"
)
DEFAULT = (
    "ALTER TABLE users RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, "
    "autovacuum_analyze_scale_factor, autovacuum_vacuum_cost_limit)"
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
        "now() - make_interval(secs => $2::int * random()) FROM generate_series(1, $1::int) g",
        args.users,
        args.interval_s,
    )
    await conn.execute("VACUUM ANALYZE users")
    print(f"-- {name}: {alter}", flush=True)
    print("t_s  updates/s  claim_ms/1000(median)  n_dead_tup  autovacuums  heap_MB  due_idx_MB")
    start = time.monotonic()
    next_report = start + 10
    window: list[float] = []
    updates = 0
    leases_vacuumed = start
    while time.monotonic() - start < args.seconds:
        t0 = time.perf_counter()
        lease = await claim_due(conn, 1000, 60, 200)
        claim_ms = (time.perf_counter() - t0) * 1000
        if lease.user_ids:
            window.append(claim_ms * 1000 / len(lease.user_ids))
            ids = [b.lease_id for b in lease.batches]
            async with conn.transaction():
                await conn.execute(APPLY_USERS, lease.user_ids, ids)
            updates += len(lease.user_ids)
            if time.monotonic() - leases_vacuumed >= 1.0:  # as the scheduler does
                await vacuum_leases(conn)
                leases_vacuumed = time.monotonic()
        else:
            await asyncio.sleep(0.01)
        if time.monotonic() >= next_report:
            s = await conn.fetchrow(STATS)
            assert s is not None
            print(
                f"{time.monotonic() - start:4.0f}  {updates / 10:9.0f}  "
                f"{statistics.median(window) if window else float('nan'):21.1f}  "
                f"{s['n_dead_tup']:10d}  {s['autovacuum_count']:11d}  "
                f"{s['heap'] / 2**20:7.1f}  {s['due_index'] / 2**20:10.1f}",
                flush=True,
            )
            window, updates = [], 0
            next_report += 10
    await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--seconds", type=int, default=240)
    parser.add_argument("--interval-s", type=int, default=20)
    parser.add_argument("--only", choices=sorted(SETTINGS), default=None)
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
