"""The engine's runs/s with and without a `simctl prune` running beside it, and the prune's own
transactions (`python -m simtools.bench.prune_pace`; docs/operations.md, "Pace").

On a private cluster with the server's settings and autovacuum on (as `simctl bench --history`
makes it): `--users` demo users back to back, one scheduler and two workers with no checkpoints
of their own, filled for `--fill-s`; then `simctl checkpoint` with the engine running. For each
pacing of `--configs` (SIM_PRUNE_DUTY/SIM_PRUNE_BATCH_MS/pairs), one `simctl prune --keep-days 0`
runs beside the engine while windows of `--window-s` alternate with and without it (stopped
with SIGSTOP between its transactions, resumed with SIGCONT; its lease made long enough), so
the box's other load falls on both kinds; then it is killed (SIGKILL leaves nothing half done)
and the next pacing goes on from where it stopped. A side connection samples the prune's open
transactions every 20 ms: the longest it saw (the first prune's verification included). Last,
a prune at the default pacing for `--final-s` (SIM_PRUNE_MAX_S), never stopped, for its own
`--json` report. Prints JSON: every window, the mean runs/s of each kind and their ratio per
pacing, the last prune's report."""

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


async def _sample(
    side: Conn, held: dict[tuple[int, Any], float], doing: dict[tuple[int, Any], str],
    stop: asyncio.Event,
) -> None:  # fmt: skip
    while not stop.is_set():
        for row in await side.fetch(history_query("hist_transactions_of"), APP):
            key = (row["pid"], row["xact_start"])
            if row["held_s"] >= held.get(key, 0.0):
                held[key] = row["held_s"]
                doing[key] = row["query"]
        await asyncio.sleep(SAMPLE_S)


async def _open(side: Conn) -> bool:
    n: int = await side.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
        "AND (xact_start IS NOT NULL OR state <> 'idle')",
        APP,
    )
    return n > 0


async def _pause_between_transactions(side: Conn, pid: int) -> None:
    """SIGSTOP the prune when it has no transaction open (else resume it until its transaction
    ends, and try again)."""
    while True:
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(0.1)
        if not await _open(side):
            return
        os.kill(pid, signal.SIGCONT)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not await _open(side):
                break


async def _keep_paused(side: Conn, pid: int, stop: asyncio.Event) -> None:
    """While a window without the prune runs: a statement the prune sent just before SIGSTOP
    (read by its backend late, on a loaded box) would hold a transaction open for the whole
    window; seen, the prune is let on until it is between transactions again."""
    await _pause_between_transactions(side, pid)
    while not stop.is_set():
        await asyncio.sleep(0.1)
        if await _open(side):
            os.kill(pid, signal.SIGCONT)
            await _pause_between_transactions(side, pid)


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
            duty, batch_ms, pairs = config.split("/")
            out["configs"].append(
                await _windows(
                    args, engine, conn, side, pauser, cmd_env, duty, batch_ms, int(pairs), say
                )
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
    pairs: int,
    say: Any,
) -> dict[str, Any]:
    """Windows with and without one prune paced at `duty` / `batch_ms`; then it is killed
    (SIGKILL: nothing half done stays, docs/operations.md) and its lease expired."""
    extra = {"SIM_PRUNE_MAX_S": "86400", "SIM_PRUNE_DUTY": duty, "SIM_PRUNE_BATCH_MS": batch_ms}
    proc = await _start_prune(env, extra)
    held: dict[tuple[int, Any], float] = {}
    doing: dict[tuple[int, Any], str] = {}
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample(side, held, doing, stop))
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
        for n in range(pairs * 2):
            with_prune = n % 2 == 0
            if proc.returncode is not None:
                say("the prune finished before the windows did")
                break
            if with_prune:
                w = await window(conn, engine, args.window_s)
            else:
                done = asyncio.Event()
                guard = asyncio.ensure_future(_keep_paused(pauser, proc.pid, done))
                try:
                    w = await window(conn, engine, args.window_s)
                finally:
                    done.set()
                    await guard
                    os.kill(proc.pid, signal.SIGCONT)
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
    top = sorted(held, key=lambda k: -held[k])[:5]
    result["longest_sampled"] = [
        {"started": str(k[1]), "held_s": round(held[k], 3), "last_seen_running": doing[k]}
        for k in top
    ]
    result["transactions_sampled"] = len(held)
    on = [w["runs_per_s"] for w in result["windows"] if w["prune"]]
    off = [w["runs_per_s"] for w in result["windows"] if not w["prune"]]
    if on and off:
        result["runs_per_s_with"] = round(statistics.mean(on), 1)
        result["runs_per_s_without"] = round(statistics.mean(off), 1)
        result["ratio"] = round(result["runs_per_s_with"] / result["runs_per_s_without"], 3)
        # Each window with the prune against the mean of the windows without beside it: the
        # box's other load drifts over minutes, and the median resists a window it hit.
        pair_ratios = []
        for i, w in enumerate(result["windows"]):
            if w["prune"]:
                near = [x["runs_per_s"] for x in result["windows"][max(0, i - 1) : i + 2]
                        if not x["prune"]]  # fmt: skip
                if near:
                    pair_ratios.append(w["runs_per_s"] / statistics.mean(near))
        result["ratio_median_of_neighbours"] = round(statistics.median(pair_ratios), 3)
    say(f"duty {duty}: ratio {result.get('ratio')}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--fill-s", type=float, default=180)
    p.add_argument("--window-s", type=float, default=30)
    p.add_argument(
        "--configs",
        default="0.1/250/3,1/60000/3",
        help="SIM_PRUNE_DUTY/SIM_PRUNE_BATCH_MS/pairs of windows of each prune measured, in "
        "turn (1/60000: no duty, 5,000-row batches: the pacing before the duty cycle)",
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
