"""The engine's runs/s with and without a `simctl prune` running beside it, and the prune's own
transactions (`python -m simtools.bench.prune_pace`; docs/operations.md, "Pace").

On a private cluster with the server's settings and autovacuum on (as `simctl bench --history`
makes it): `--users` demo users back to back, one scheduler and two workers with no checkpoints
of their own, filled for `--fill-s`; then `simctl checkpoint` with the engine running, and one
`simctl prune --keep-days 0 --json` started beside it. Windows of `--window-s` alternate with
and without the prune (stopped with SIGSTOP between its transactions, resumed with SIGCONT; the
lease is made long enough for that), `--pairs` times, so the box's other load falls on both.
A side connection samples the prune's open transactions every 20 ms: the longest it saw.
Then the prune is left to finish (up to `--finish-s`), the engine still running. Prints JSON:
every window, the mean runs/s of each kind, their ratio, the prune's own report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from simconfig import Settings
from simtools.bench import queries as bench_sql
from simtools.bench.databases import scratch_database
from simtools.bench.history import Engine, back_to_back, base_env, cluster_conf, window
from simtools.bench.history_probe import history_query, runs_taken
from simtools.harness.procs import run_simctl, simctl_argv, with_app_name
from simtools.harness.services import PrivateCluster, PrivateRedis
from store.db import Conn, connect

APP = "prunepace-prune"
SAMPLE_S = 0.02


async def _sample(side: Conn, held: dict[tuple[int, Any], float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for row in await side.fetch(history_query("hist_transactions_of"), APP):
            key = (row["pid"], row["xact_start"])
            held[key] = max(held.get(key, 0.0), row["held_s"])
        await asyncio.sleep(SAMPLE_S)


async def _pause_between_transactions(side: Conn, pid: int) -> None:
    """SIGSTOP the prune when it has no transaction open (else resume and try again)."""
    while True:
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(0.05)
        if not await side.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
            "AND xact_start IS NOT NULL",
            APP,
        ):
            return
        os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(0.01)


async def measure(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    settings = Settings()
    conf, major, segment_mb = await cluster_conf(settings)
    cluster = PrivateCluster(conf, major=major, wal_segment_mb=segment_mb, folder=args.keep)
    await asyncio.to_thread(cluster.init)
    await asyncio.to_thread(cluster.start)
    redis = PrivateRedis()
    try:
        await asyncio.to_thread(redis.start)
        logdir = cluster.dir / "logs"
        logdir.mkdir()
        env = base_env(settings, redis.url, secrets.token_hex(24))
        async with scratch_database(
            cluster.url(),
            f"simbench_{os.getpid()}_prunepace",
            users=args.users,
            due=False,
            settings=settings,
        ) as url:
            return await _run(args, env, url, logdir, say)
    finally:
        redis.close()
        await asyncio.to_thread(cluster.close)


async def _run(
    args: argparse.Namespace, env: dict[str, str], url: str, logdir: Path, say: Any
) -> dict[str, Any]:
    conn = await connect(url)
    side = await connect(url)
    pauser = await connect(url)
    cmd_env = {**env, "DATABASE_URL": url}
    engine = Engine(env, url, logdir, 2, "pace")
    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "configs": []}
    try:
        await bench_sql.park(conn)
        engine.start(0)  # SIM_CHECKPOINT_INTERVAL_S=0: the checkpoint below is the only one
        await back_to_back(conn, 1)
        say(f"filling {args.fill_s} s")
        await asyncio.sleep(args.fill_s)
        out["runs_before_checkpoint"] = await runs_taken(conn)
        say("checkpoint (the engine running)")
        t = time.monotonic()
        done = await asyncio.to_thread(run_simctl, ["checkpoint", "--json"], cmd_env, 3600)
        out["checkpoint_s"] = round(time.monotonic() - t, 1)
        if done.returncode != 0:
            raise SystemExit(f"checkpoint failed: {done.stderr[-500:]}")
        say(f"checkpoint took {out['checkpoint_s']} s")
        for config in args.configs.split(","):
            duty, batch_ms = config.split("/")
            out["configs"].append(
                await _windows(args, engine, conn, side, pauser, cmd_env, duty, batch_ms, say)
            )
        # The last: the default pacing until SIM_PRUNE_MAX_S stops it, for its own report.
        say(f"a default prune for {args.final_s} s (its --json report)")
        proc = await _start_prune(cmd_env, {"SIM_PRUNE_MAX_S": str(args.final_s)})
        stdout, stderr = await proc.communicate()
        out["final_prune"] = {
            "exit": proc.returncode,
            "report": json.loads(stdout) if proc.returncode == 0 else None,
            "stderr": stderr.decode()[-500:],
        }
    finally:
        engine.stop()
        for c in (pauser, side, conn):
            await c.close()
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return out


async def _start_prune(env: dict[str, str], extra: dict[str, str]) -> Any:
    prune_env = {
        **env,
        "DATABASE_URL": with_app_name(env["DATABASE_URL"], APP),
        "SIM_HISTORY_LEASE_S": "3600",  # it is stopped between windows
        **extra,
    }
    return await asyncio.create_subprocess_exec(
        *simctl_argv("prune", "--keep-days", "0", "--json"),
        env=prune_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _windows(
    args: argparse.Namespace,
    engine: Engine,
    conn: Conn,
    side: Conn,
    pauser: Conn,
    env: dict[str, str],
    duty: str,
    batch_ms: str,
    say: Any,
) -> dict[str, Any]:
    """Windows with and without one prune paced at `duty` / `batch_ms`; then it is killed
    (SIGKILL: nothing half done stays, docs/operations.md) and its lease expired."""
    extra = {"SIM_PRUNE_MAX_S": "86400", "SIM_PRUNE_DUTY": duty, "SIM_PRUNE_BATCH_MS": batch_ms}
    proc = await _start_prune(env, extra)
    held: dict[tuple[int, Any], float] = {}
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample(side, held, stop))
    result: dict[str, Any] = {"duty": duty, "batch_ms": batch_ms, "windows": []}
    try:
        # Its verification before the deletes (the first prune only): wait until it deletes.
        while True:
            if await conn.fetchval("SELECT pruned_through FROM sim_history") is not None:
                break
            if proc.returncode is not None:
                _, err = await proc.communicate()
                raise SystemExit(f"the prune exited before it deleted anything: {err.decode()}")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        say(f"duty {duty}, budget {batch_ms} ms: deleting; windows")
        engine_rows = (
            "SELECT (SELECT count(*) FROM sim_runs WHERE id <= h.runs_floor) FROM sim_history h"
        )
        left_before = await conn.fetchval(engine_rows)
        running = True
        for n in range(args.pairs * 2):
            with_prune = n % 2 == 0
            if with_prune and not running:
                os.kill(proc.pid, signal.SIGCONT)
            elif not with_prune:
                await _pause_between_transactions(pauser, proc.pid)
            running = with_prune
            if proc.returncode is not None:
                say("the prune finished before the windows did")
                break
            w = await window(conn, engine, args.window_s)
            result["windows"].append({"prune": with_prune, "runs_per_s": w.runs_per_s,
                                      "runs": w.runs, "seconds": w.seconds})  # fmt: skip
            say(f"window {n}: prune={with_prune} {w.runs_per_s} runs/s")
        result["runs_below_floor_deleted"] = left_before - await conn.fetchval(engine_rows)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        stop.set()
        await sampler
    await conn.execute("UPDATE sim_history SET lease_until = now() - interval '1 second'")
    result["longest_transaction_sampled_s"] = round(max(held.values(), default=0.0), 3)
    result["transactions_sampled"] = len(held)
    on = [w["runs_per_s"] for w in result["windows"] if w["prune"]]
    off = [w["runs_per_s"] for w in result["windows"] if not w["prune"]]
    if on and off:
        result["runs_per_s_with"] = round(statistics.mean(on), 1)
        result["runs_per_s_without"] = round(statistics.mean(off), 1)
        result["ratio"] = round(result["runs_per_s_with"] / result["runs_per_s_without"], 3)
    say(f"duty {duty}: ratio {result.get('ratio')}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--fill-s", type=float, default=180)
    p.add_argument("--window-s", type=float, default=30)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument(
        "--configs",
        default="0.1/250,1/60000",
        help="SIM_PRUNE_DUTY/SIM_PRUNE_BATCH_MS of each prune measured, in turn (1/60000: no "
        "duty, 5,000-row batches: the pacing before the duty cycle)",
    )
    p.add_argument("--final-s", type=int, default=120, help="SIM_PRUNE_MAX_S of the last prune")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep", type=Path, default=None, help="the cluster's folder, kept (logs)")
    args = p.parse_args()

    def say(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    result = asyncio.run(measure(args, say))
    text = json.dumps(result, indent=1, default=str)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
