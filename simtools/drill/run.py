"""The chaos drill: the engine under every fault at once, judged by SQL alone.

It starts a private Postgres cluster and a private redis-server in a temp directory, migrates,
seeds users with a short interval, runs several `simctl scheduler` and `simctl worker` processes
under a small supervisor (a killed or exited process is started again, as systemd or Kubernetes
would), and injects, at moments drawn from --seed: worker SIGKILLs aimed at workers inside a
transaction, scheduler SIGKILLs, Redis FLUSHALL, Redis restarts, Postgres crash-restarts and
concurrent duplicate `simctl run`s. Then it lets the system drain, stops everything, and checks
what no fault may break (each slot runs once and never early, a lost slot runs again within the
recovery bound, no run is half-written, the ledger reconciles) with the queries of drill.sql and
`simctl reconcile`.

Usage: python -m simtools.drill --size ci   (scripts/drill wraps it; --help lists every option)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from redis.exceptions import RedisError

from simtools.drill import queries as checks
from simtools.drill.procs import DrillError, Monitor, now_utc
from simtools.drill.queries import Fault, Trigger
from simtools.harness.procs import (
    Child,
    Proc,
    Supervisor,
    run_simctl,
    simctl_argv,
    with_app_name,
)
from simtools.harness.services import PrivateCluster, PrivateRedis, ServiceError
from store.db import connect

# The drill's cluster: close to the shared server's settings (fsync on, 128 MB buffers,
# autovacuum off).
CLUSTER_CONF = {
    "fsync": "on",
    "synchronous_commit": "on",
    "shared_buffers": "128MB",
    "max_connections": "100",
    "autovacuum": "off",
    "max_wal_size": "1GB",
    "min_wal_size": "80MB",
    "timezone": "UTC",
    "log_timezone": "UTC",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}
FAULT_KINDS = ("worker_kill", "scheduler_kill", "redis_flush", "redis_restart", "pg_crash")


@dataclass(frozen=True)
class DrillPlan:
    """Everything that sizes a drill; --size picks one of SIZES, options override fields."""

    users: int
    interval_s: int
    faults_s: float
    worker_kills: int
    scheduler_kills: int
    flushes: int
    redis_restarts: int
    pg_crashes: int
    workers: int
    schedulers: int
    triggers: int
    lease_s: int
    warmup_s: float
    seed: int = 1
    drain_s: float | None = None
    pass_s: float = 5.0
    restart_delay_s: float = 1.0
    trigger_concurrency: int = 2
    progress_s: float = 5.0
    keep: bool = False
    workdir: str | None = None

    @property
    def drain(self) -> float:
        """Long enough for a lost slot's lease to lapse twice, then one more interval measured."""
        if self.drain_s is not None:
            return self.drain_s
        return 2 * self.lease_s + self.pass_s + max(self.interval_s, 10)

    @property
    def bound_s(self) -> float:
        """How late a lost slot may run: its lease expires (SIM_LEASE_S), then the next scheduler
        pass claims it again."""
        return self.lease_s + self.pass_s


SIZES: dict[str, DrillPlan] = {
    "full": DrillPlan(
        users=50_000,
        interval_s=30,
        faults_s=300,
        worker_kills=20,
        scheduler_kills=2,
        flushes=3,
        redis_restarts=1,
        pg_crashes=1,
        workers=4,
        schedulers=3,
        triggers=200,
        lease_s=60,
        warmup_s=20,
    ),
    "ci": DrillPlan(
        users=5_000,
        interval_s=10,
        faults_s=60,
        worker_kills=4,
        scheduler_kills=1,
        flushes=1,
        redis_restarts=1,
        pg_crashes=1,
        workers=2,
        schedulers=2,
        triggers=10,
        lease_s=10,
        warmup_s=8,
    ),
}


# -- the fault schedule -----------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedFault:
    at_s: float  # seconds after the faults phase starts
    kind: str
    user_index: int = 0  # for a duplicate trigger: which seeded user (index into the ids)


def schedule(plan: DrillPlan) -> tuple[list[PlannedFault], list[PlannedFault]]:
    """(faults, duplicate triggers), each sorted by time; a pure function of the plan's seed."""
    rng = random.Random(plan.seed)
    counts = {
        "worker_kill": plan.worker_kills,
        "scheduler_kill": plan.scheduler_kills,
        "redis_flush": plan.flushes,
        "redis_restart": plan.redis_restarts,
        "pg_crash": plan.pg_crashes,
    }
    faults = [
        PlannedFault(round(rng.uniform(0, plan.faults_s), 3), kind)
        for kind in FAULT_KINDS
        for _ in range(counts[kind])
    ]
    triggers = [
        PlannedFault(
            round(rng.uniform(0, plan.faults_s), 3), "duplicate_run", rng.randrange(plan.users)
        )
        for _ in range(plan.triggers)
    ]
    return sorted(faults, key=lambda p: p.at_s), sorted(triggers, key=lambda p: p.at_s)


# -- the drill --------------------------------------------------------------------------------
@dataclass
class Drill:
    plan: DrillPlan
    say: Callable[[str], None]
    root: Path
    pg: PrivateCluster
    redis: PrivateRedis
    env: dict[str, str]
    sup: Supervisor | None = None
    faults: list[Fault] = field(default_factory=list)
    fault_failures: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[Trigger] = field(default_factory=list)
    trigger_late_s: list[float] = field(default_factory=list)
    trigger_cpu_s: list[float] = field(default_factory=list)
    kills_mid_transaction: int = 0
    phase: str = "setup"

    def simctl(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run_simctl(
            args,
            {**self.env, "DATABASE_URL": with_app_name(self.pg.url(), "drill-cli")},
            timeout=timeout,
            cwd=self.root,
        )

    def must(self, *args: str) -> None:
        done = self.simctl(*args)
        if done.returncode != 0:
            raise DrillError(f"simctl {args[0]} exited {done.returncode}: {done.stderr.strip()}")

    # faults
    async def inject(self, planned: list[PlannedFault], start: float, mon: Monitor) -> None:
        rng = random.Random(self.plan.seed + 1)  # targets: seeded, though who is busy is not
        assert self.sup is not None
        for n, p in enumerate(planned, 1):
            await asyncio.sleep(max(0.0, start + p.at_s - time.monotonic()))
            at = now_utc()
            try:
                target, detail = await self._one_fault(p.kind, rng, mon)
            except (
                DrillError,
                ServiceError,
                RedisError,
                OSError,
                subprocess.SubprocessError,
            ) as exc:
                self.fault_failures.append(
                    {"kind": p.kind, "at": at.isoformat(), "error": str(exc)[:300]}
                )
                continue
            self.faults.append(Fault(n, p.kind, at, target, detail))

    async def _one_fault(self, kind: str, rng: random.Random, mon: Monitor) -> tuple[str, str]:
        assert self.sup is not None
        if kind == "worker_kill":
            return await self._kill_worker(rng, mon)
        if kind == "scheduler_kill":
            alive = await self._alive("scheduler")
            child = rng.choice(alive)
            self.sup.kill(child)
            return child.app, "SIGKILL"
        if kind == "redis_flush":
            await self.redis.flushall()
            return "redis", "FLUSHALL"
        if kind == "redis_restart":
            down_s = await self.redis.restart()
            return "redis", f"SHUTDOWN NOSAVE, started again after {down_s:.2f} s"
        if kind == "pg_crash":
            began = time.monotonic()
            await asyncio.to_thread(self.pg.stop, "immediate")
            await mon.close()
            await asyncio.to_thread(self.pg.start)
            return (
                "postgres",
                f"stop -m immediate; accepting again after {time.monotonic() - began:.2f} s",
            )
        raise AssertionError(kind)

    async def _alive(self, role: str, limit_s: float = 10.0) -> list[Child]:
        """The live processes of a role, waiting up to limit_s for the supervisor to restart one."""
        assert self.sup is not None
        deadline = time.monotonic() + limit_s
        while not (alive := self.sup.alive(role)):
            if time.monotonic() > deadline:
                raise DrillError(f"no {role} alive for {limit_s:.0f} s")
            await asyncio.sleep(0.05)
        return alive

    async def _kill_worker(self, rng: random.Random, mon: Monitor) -> tuple[str, str]:
        """SIGKILL a worker seen inside a transaction (looked for up to 2 s), else any live
        worker (waiting up to 10 s for the supervisor to bring one back)."""
        assert self.sup is not None
        began = time.monotonic()
        while True:
            rows = await mon.call(lambda c: checks.open_transactions(c, "drill-w")) or []
            busy = sorted(
                {child.app: child for app, _, _ in rows if (child := self.sup.by_app(app))}.items()
            )
            if busy:
                app, child = rng.choice(busy)
                states = sorted({s for a, _, s in rows if a == app})
                self.sup.kill(child)
                self.kills_mid_transaction += 1
                return app, "SIGKILL inside a transaction (" + ", ".join(states) + ")"
            waited = time.monotonic() - began
            alive = self.sup.alive("worker")
            if waited > 2.0 and alive:
                child = rng.choice(alive)
                self.sup.kill(child)
                return child.app, "SIGKILL (no worker was inside a transaction within 2 s)"
            if waited > 10.0:
                raise DrillError("no worker alive to kill for 10 s")
            await asyncio.sleep(0.01)

    # duplicate triggers
    async def trigger(self, planned: list[PlannedFault], start: float, user_ids: list[int]) -> None:
        """Each planned trigger: two concurrent `simctl run` of one user, niced, at most
        trigger_concurrency processes at once (their import CPU would starve the engine)."""
        gate = asyncio.Semaphore(self.plan.trigger_concurrency)
        env = {**self.env, "DATABASE_URL": with_app_name(self.pg.url(), "drill-run")}
        assert self.sup is not None
        sup = self.sup

        async def one(user_id: int, due: float) -> None:
            async with gate:
                self.trigger_late_s.append(time.monotonic() - due)
                issued = now_utc()
                # A fork-exec; asyncio's subprocesses give no rusage.
                proc = Proc(
                    ["nice", "-n", "19", *simctl_argv("run", str(user_id))],
                    env,
                    cwd=self.root,
                    new_session=True,
                )
                sup.extra_pids.add(proc.pid)
                # wait4 rather than wait: its rusage is the CPU this one `simctl run` cost.
                _, status, usage = await asyncio.to_thread(os.wait4, proc.pid, 0)
                proc.popen.returncode = code = os.waitstatus_to_exitcode(status)
                sup.extra_pids.discard(proc.pid)
                self.trigger_cpu_s.append(usage.ru_utime + usage.ru_stime)
                self.triggers.append(Trigger(user_id, issued, now_utc(), code))

        tasks: list[asyncio.Task[None]] = []
        for p in planned:
            due = start + p.at_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            uid = user_ids[p.user_index % len(user_ids)]
            tasks += [asyncio.create_task(one(uid, due)) for _ in range(2)]
        await asyncio.gather(*tasks)

    async def progress(self, mon: Monitor, t0: float) -> None:
        last: tuple[float, int] | None = None
        while True:
            await asyncio.sleep(self.plan.progress_s)
            data = await mon.call(checks.progress)
            assert self.sup is not None
            now = time.monotonic()
            if data is None:
                line = "postgres unreachable"
            else:
                rate = ""
                if last is not None and now > last[0]:
                    rate = f" ({(data['run_ids'] - last[1]) / (now - last[0]):.0f}/s)"
                last = (now, data["run_ids"])
                oldest = data["oldest_due_s"]
                line = (
                    f"run ids {data['run_ids']}{rate}, due {data['due']}"
                    f" (oldest {0.0 if oldest is None else oldest:.1f} s)"
                )
            self.say(
                f"{now - t0:5.0f} s {self.phase}: {line}; workers {len(self.sup.alive('worker'))}"
                f"/{self.plan.workers}, schedulers {len(self.sup.alive('scheduler'))}"
                f"/{self.plan.schedulers}; faults {len(self.faults)}, runs issued"
                f" {len(self.triggers)}, exits {len(self.sup.exits)}"
            )

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        say = self.say
        say(f"postgres: initdb in {self.pg.data}")
        await asyncio.to_thread(self.pg.init)
        await asyncio.to_thread(self.pg.start)
        await asyncio.to_thread(self.redis.start)
        say("simctl migrate")
        await asyncio.to_thread(self.must, "migrate")
        say(f"simctl seed-demo --users {plan.users} --interval-s {plan.interval_s}")
        await asyncio.to_thread(
            self.must,
            "seed-demo",
            "--users",
            str(plan.users),
            "--interval-s",
            str(plan.interval_s),
            "--seed",
            str(plan.seed),
        )
        conn = await connect(self.pg.url())
        try:
            await checks.prepare(conn)
            user_ids: list[int] = [
                r["user_id"]
                for r in await conn.fetch("SELECT user_id FROM drill.first_slots ORDER BY user_id")
            ]
        finally:
            await conn.close()
        planned_faults, planned_triggers = schedule(plan)
        began = now_utc()
        t0 = time.monotonic()
        self.sup = Supervisor(
            self.env,
            self.pg.url(),
            self.root / "logs",
            self.root,
            plan.restart_delay_s,
            app_prefix="drill",
        )
        self.sup.logdir.mkdir()
        for i in range(plan.schedulers):
            self.sup.start("scheduler", i)
        for i in range(plan.workers):
            self.sup.start("worker", i)
        mon = Monitor(self.pg.url())
        background = [
            asyncio.create_task(self.sup.watch()),
            asyncio.create_task(self.progress(mon, t0)),
        ]
        try:
            self.phase = "warmup"
            say(
                f"{plan.schedulers} scheduler(s), {plan.workers} worker(s) started; warm-up"
                f" {plan.warmup_s:.0f} s, then {plan.faults_s:.0f} s of faults"
            )
            await asyncio.sleep(plan.warmup_s)
            self.phase = "faults"
            faults_from = now_utc()
            start = time.monotonic()
            await asyncio.gather(
                self.inject(planned_faults, start, mon),
                self.trigger(planned_triggers, start, user_ids),
                asyncio.sleep(plan.faults_s),
            )
            faults_to = now_utc()
            last_fault = max(
                [f.at for f in self.faults] + [t.done_at for t in self.triggers] + [faults_from]
            )
            self.phase = "drain"
            drain_until = last_fault + timedelta(seconds=plan.drain)
            say(f"faults over; draining until {plan.drain:.0f} s after the last fault")
            await asyncio.sleep(max(0.0, (drain_until - now_utc()).total_seconds()))
            # Postgres may still be recovering from the last crash: ask until it answers.
            left = None
            for _ in range(60):
                left = await mon.call(lambda c: checks.left_due(c, plan.bound_s))
                if left is not None:
                    break
                await asyncio.sleep(0.5)
            end = now_utc()
        finally:
            for task in background:
                task.cancel()
            await mon.close()
        self.phase = "checks"
        say("stopping schedulers and workers (SIGTERM)")
        await self.sup.stop_all()
        say("checking the invariants")
        return await self.judge(began, faults_from, faults_to, last_fault, end, left)

    async def judge(
        self,
        began: datetime,
        faults_from: datetime,
        faults_to: datetime,
        last_fault: datetime,
        end: datetime,
        left: tuple[int, float | None] | None,
    ) -> dict[str, Any]:
        plan = self.plan
        assert self.sup is not None
        conn = await connect(self.pg.url())
        try:
            await checks.record(conn, self.faults, self.triggers)
            walk = await checks.slot_walk(conn)
            partial = await checks.partial_runs(conn)
            duplicates = await checks.duplicate_slots(conn)
            recovered_from = last_fault + timedelta(seconds=2 * plan.lease_s)
            lag = await checks.lag_phases(conn, faults_from, last_fault, recovered_from, end)
            recovery = await checks.fault_recovery(conn)
            totals = await checks.run_totals(conn, faults_from, faults_to)
            late = await checks.late_slots(conn, plan.lease_s)
        finally:
            await conn.close()
        reconcile = await asyncio.to_thread(self.simctl, "reconcile")
        left_users, left_oldest = left if left is not None else (-1, None)
        invariants: dict[str, int] = {
            "duplicate_slots": duplicates,
            "early_slots": walk.get("early", {}).get("n", 0),
            "skipped_slots": walk.get("skipped", {}).get("n", 0),
            "users_left_due": left_users,
            **partial,
            "reconcile_exit_code": reconcile.returncode,
        }
        worst = max(
            (v for p in ("faults", "after") if (v := lag[p]["max_s"]) is not None), default=None
        )
        p99_recovered = lag["recovered"]["p99_s"]
        floors = [
            _floor("every invariant zero", 0, sum(abs(v) for v in invariants.values())),
            _floor("worst lag during and after the faults (s)", plan.bound_s, worst),
            _floor(
                "p99 lag from 2 leases after the last fault (s)", 1.0, p99_recovered, strict=True
            ),
            _floor("processes that exited by themselves", 0, len(self.sup.exits)),
        ]
        by_kind = Counter(f.kind for f in self.faults)
        by_kind["duplicate_run"] = len(self.triggers) // 2
        faults_s = (faults_to - faults_from).total_seconds()
        span_s = (end - began).total_seconds()
        return {
            "plan": {**asdict(plan), "drain_s": plan.drain, "bound_s": plan.bound_s},
            "cluster": str(self.root) if plan.keep else None,
            "window": {
                "started": began.isoformat(),
                "faults_from": faults_from.isoformat(),
                "faults_to": faults_to.isoformat(),
                "last_fault": last_fault.isoformat(),
                "end": end.isoformat(),
            },
            "faults_by_kind": dict(by_kind),
            "faults": [
                {
                    "kind": f.kind,
                    "offset_s": round((f.at - faults_from).total_seconds(), 2),
                    "target": f.target,
                    "detail": f.detail,
                    "first_commit_after_s": _r(r["first_commit_s"]),
                    "worst_lag_of_slots_hit_s": _r(r["worst_lag_s"]),
                    "slots_hit": r["slots_due"],
                }
                for f, r in zip(self.faults, recovery, strict=True)
            ],
            "faults_not_injected": self.fault_failures,
            "worker_kills_mid_transaction": self.kills_mid_transaction,
            "duplicate_runs": {
                "processes": len(self.triggers),
                "exit_codes": dict(Counter(str(t.exit_code) for t in self.triggers)),
                "issued_late_max_s": _r(max(self.trigger_late_s, default=0.0)),
                "cpu_s_mean": _r(statistics.fmean(self.trigger_cpu_s))
                if self.trigger_cpu_s
                else None,
                "cpu_s_total": _r(sum(self.trigger_cpu_s)),
                "duration_max_s": _r(
                    max(
                        ((t.done_at - t.issued_at).total_seconds() for t in self.triggers),
                        default=0.0,
                    )
                ),
            },
            "process_exits": [
                {**e, "offset_s": round((_parse(e["at"]) - faults_from).total_seconds(), 1)}
                for e in self.sup.exits
            ],
            "process_restarts": self.sup.restarts,
            "runs": {
                **totals,
                "per_s": round(totals["runs"] / span_s, 1) if span_s > 0 else None,
                "per_s_during_faults": round(totals["runs_in_faults"] / faults_s, 1)
                if faults_s > 0
                else None,
                "per_s_scheduled": round(plan.users / plan.interval_s, 1),
            },
            "lag": {p: {k: _r(v) for k, v in s.items()} for p, s in lag.items()},
            "late_slots": {k: _r(v) for k, v in late.items()},
            "slot_walk": walk,
            "left_due_oldest_s": _r(left_oldest),
            "invariants": invariants,
            "invariants_ok": all(v == 0 for v in invariants.values()),
            "reconcile": (reconcile.stdout.strip().splitlines() or [""])[-1][:300]
            + (f" {reconcile.stderr.strip()[:300]}" if reconcile.returncode else ""),
            "floors": floors,
            "ok": all(f["ok"] for f in floors),
        }


def _parse(at: str) -> datetime:
    return datetime.fromisoformat(at)


def _r(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def _floor(name: str, limit: float, value: float | None, strict: bool = False) -> dict[str, Any]:
    ok = value is not None and (value < limit if strict else value <= limit)
    return {"name": name, "limit": limit, "value": _r(value), "ok": ok}


# -- output -----------------------------------------------------------------------------------
def summary(result: dict[str, Any]) -> str:
    """The report as a person reads it."""
    p = result["plan"]
    lines = [
        f"simengine chaos drill: {p['users']} users every {p['interval_s']} s, "
        f"{p['workers']} workers, {p['schedulers']} schedulers, {p['faults_s']:.0f} s of faults, "
        f"SIM_LEASE_S {p['lease_s']}, seed {p['seed']}",
        "",
        "faults injected: "
        + ", ".join(f"{k} {v}" for k, v in sorted(result["faults_by_kind"].items()))
        + f" (worker kills inside a transaction: {result['worker_kills_mid_transaction']})",
    ]
    for f in result["faults_not_injected"]:
        lines.append(f"  NOT injected: {f['kind']} at {f['at']}: {f['error']}")
    lines.append(
        "  at (s)  kind            first run after (s)  worst lag of slots hit (s)  target / detail"
    )
    for f in result["faults"]:
        lines.append(
            f"  {f['offset_s']:6.1f}  {f['kind']:<15} {_fmt(f['first_commit_after_s']):>19}"
            f"  {_fmt(f['worst_lag_of_slots_hit_s']):>26}  {f['target']}: {f['detail']}"
        )
    d = result["duplicate_runs"]
    lines.append(
        f"duplicate `simctl run`s: {d['processes']} processes, exit codes {d['exit_codes']}, "
        f"issued up to {d['issued_late_max_s']} s late, longest {d['duration_max_s']} s, "
        f"CPU {_fmt(d['cpu_s_mean'])} s each ({_fmt(d['cpu_s_total'])} s in all)"
    )
    lines.append(
        f"processes that exited by themselves: {len(result['process_exits'])} "
        f"(restarts in all: {result['process_restarts']})"
    )
    for e in result["process_exits"][:10]:
        lines.append(
            f"  {e['role']}{e['index']} exit {e['exit_code']} at {e['offset_s']} s: {e['last_line']}"
        )
    r = result["runs"]
    lines += [
        "",
        f"runs: {r['runs']} ({r['per_s']}/s overall, {r['per_s_during_faults']}/s during the "
        f"faults, {r['per_s_scheduled']}/s scheduled), trades {r['trades']}",
        "lag (started_at - scheduled_for):  runs      p50 s    p99 s    max s",
    ]
    for phase, s in result["lag"].items():
        lines.append(
            f"  {phase:<31} {s['runs']:>6} {_fmt(s['p50_s']):>9} {_fmt(s['p99_s']):>8}"
            f" {_fmt(s['max_s']):>8}"
        )
    late = result["late_slots"]
    lines.append(
        f"runs later than the lease: {late['runs']} (max {_fmt(late['max_s'])} s), of which "
        f"{late['with_trigger']} had a `simctl run` of their user while waiting "
        f"(max {_fmt(late['max_with_trigger_s'])} s; without: {_fmt(late['max_without_trigger_s'])} s)"
    )
    walk = ", ".join(f"{k} {v['n']}" for k, v in sorted(result["slot_walk"].items()))
    lines += ["", f"slot walk: {walk}", "invariants:"]
    for k, v in result["invariants"].items():
        lines.append(f"  {k:<28} {v}{'' if v == 0 else '   <-- VIOLATED'}")
    for verdict in ("early", "skipped"):
        for ex in result["slot_walk"].get(verdict, {}).get("examples", []):
            lines.append(f"  {verdict}: {ex}")
    lines.append(f"reconcile: {result['reconcile']}")
    lines += ["", "floors:"]
    for f in result["floors"]:
        mark = "ok  " if f["ok"] else "MISS"
        lines.append(f"  {mark} {f['name']}: {_fmt(f['value'])} (limit {f['limit']})")
    lines.append("")
    lines.append("PASS" if result["ok"] else "FAIL")
    if result["cluster"]:
        lines.append(f"kept: {result['cluster']} (postgres stopped; logs in logs/)")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def child_env(pg_url: str, redis_url: str, plan: DrillPlan) -> dict[str, str]:
    """The children's environment: nothing of the operator's SIM_* or URLs leaks in."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SIM_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    base.update(
        DATABASE_URL=pg_url,
        REDIS_URL=redis_url,
        SIM_SEED=str(plan.seed),
        SIM_LEASE_S=str(plan.lease_s),
        SIM_LOG_JSON="true",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return base


@contextlib.contextmanager
def workspace(plan: DrillPlan) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="simengine-drill-", dir=plan.workdir))
    if os.geteuid() == 0:
        root.chmod(0o711)  # the postgres OS user runs the cluster inside it
    try:
        yield root
    finally:
        if not plan.keep:
            shutil.rmtree(root, ignore_errors=True)


def run_drill(plan: DrillPlan, say: Callable[[str], None]) -> dict[str, Any]:
    """Set up, inject, drain, judge; every child and the temp cluster are gone afterwards,
    whatever happened (Ctrl-C and SIGTERM included)."""
    with workspace(plan) as root:
        pg = PrivateCluster(CLUSTER_CONF, folder=root / "postgres")
        redis = PrivateRedis(folder=root / "redis", new_session=True)
        drill = Drill(plan, say, root, pg, redis, child_env(pg.url(), redis.url, plan))

        async def main() -> dict[str, Any]:
            task = asyncio.current_task()
            assert task is not None
            # Both end the drill the same way, even where a shell started it with SIGINT ignored.
            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
            return await drill.run()

        try:
            return asyncio.run(main())
        finally:
            if drill.sup is not None:
                drill.sup.kill_all()
            redis.close()
            with contextlib.suppress(ServiceError, subprocess.SubprocessError):
                pg.close()


# -- command line -----------------------------------------------------------------------------
def _opt(help_text: str, *, min_value: float | None = None) -> Any:
    return typer.Option(help=help_text, min=min_value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _preset(name: str, help_text: str, *, min_value: float) -> Any:
    """An option overriding a DrillPlan field, its help ending with each preset's value of it."""
    values = ", ".join(f"{size} {_number(getattr(plan, name))}" for size, plan in SIZES.items())
    return _opt(f"{help_text} ({values}).", min_value=min_value)


cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@cli.command()
def drill(
    size: Annotated[
        str, typer.Option("--size", help="Preset: full (the issue's drill) or ci (about 2 min).")
    ] = "full",
    seed: Annotated[int, _opt("Seed of the fault schedule, users and market.", min_value=0)] = 1,
    users: Annotated[int | None, _preset("users", "Users seeded", min_value=1)] = None,
    interval_s: Annotated[
        int | None, _preset("interval_s", "Their sim_interval_s", min_value=1)
    ] = None,
    faults_s: Annotated[
        float | None, _preset("faults_s", "Length of the faults phase", min_value=1)
    ] = None,
    worker_kills: Annotated[
        int | None,
        _preset(
            "worker_kills",
            "Worker SIGKILLs, aimed at workers inside a transaction",
            min_value=0,
        ),
    ] = None,
    scheduler_kills: Annotated[
        int | None, _preset("scheduler_kills", "Scheduler SIGKILLs", min_value=0)
    ] = None,
    flushes: Annotated[int | None, _preset("flushes", "Redis FLUSHALLs", min_value=0)] = None,
    redis_restarts: Annotated[
        int | None,
        _preset("redis_restarts", "Redis SHUTDOWN NOSAVE + start", min_value=0),
    ] = None,
    pg_crashes: Annotated[
        int | None,
        _preset("pg_crashes", "Postgres `pg_ctl stop -m immediate` + start", min_value=0),
    ] = None,
    workers: Annotated[
        int | None, _preset("workers", "simctl worker processes", min_value=1)
    ] = None,
    schedulers: Annotated[
        int | None, _preset("schedulers", "simctl scheduler processes", min_value=1)
    ] = None,
    triggers: Annotated[
        int | None,
        _preset(
            "triggers",
            "Duplicate triggers: each is two concurrent `simctl run` of one random user",
            min_value=0,
        ),
    ] = None,
    lease_s: Annotated[
        int | None, _preset("lease_s", "SIM_LEASE_S of every process", min_value=1)
    ] = None,
    warmup_s: Annotated[
        float | None, _preset("warmup_s", "Running without faults first", min_value=0)
    ] = None,
    drain_s: Annotated[
        float | None,
        _opt(
            "Running without faults after the last one before stopping "
            "(default 2 x lease + pass + max(interval, 10)).",
            min_value=0,
        ),
    ] = None,
    pass_s: Annotated[
        float,
        _opt(
            "What one scheduler pass may take: the recovery bound is SIM_LEASE_S plus this.",
            min_value=0,
        ),
    ] = 5.0,
    restart_delay_s: Annotated[
        float, _opt("How long the supervisor waits before restarting a process.", min_value=0)
    ] = 1.0,
    trigger_concurrency: Annotated[
        int, _opt("At most this many `simctl run` processes at once (niced).", min_value=1)
    ] = 2,
    keep: Annotated[
        bool,
        typer.Option("--keep", help="Keep the temp directory (cluster, logs) for inspection."),
    ] = False,
    workdir: Annotated[
        str | None, typer.Option("--workdir", help="Where the temp directory goes.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON instead of the summary.")
    ] = False,
) -> None:
    """The chaos drill: a private Postgres and Redis, seeded users, several schedulers and
    workers under a supervisor, and every fault at seeded moments; then the invariants by SQL
    (no slot twice, none skipped or early, nobody left due, no partial run, reconcile clean),
    lag by phase and recovery per fault. Progress goes to stderr.

    Exit 0 when every invariant is zero and every floor is met, 1 otherwise, 2 when the drill
    cannot run (missing initdb or redis-server, a setup step failed).

    Example: scripts/drill --size ci
    """
    if size not in SIZES:
        raise typer.BadParameter(f"expected one of {', '.join(SIZES)}", param_hint="--size")
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "users": users,
            "interval_s": interval_s,
            "faults_s": faults_s,
            "worker_kills": worker_kills,
            "scheduler_kills": scheduler_kills,
            "flushes": flushes,
            "redis_restarts": redis_restarts,
            "pg_crashes": pg_crashes,
            "workers": workers,
            "schedulers": schedulers,
            "triggers": triggers,
            "lease_s": lease_s,
            "warmup_s": warmup_s,
        }.items()
        if v is not None
    }
    plan = replace(
        SIZES[size],
        **overrides,
        seed=seed,
        drain_s=drain_s,
        pass_s=pass_s,
        restart_delay_s=restart_delay_s,
        trigger_concurrency=trigger_concurrency,
        keep=keep,
        workdir=workdir,
    )
    t0 = time.monotonic()

    def say(message: str) -> None:
        print(f"drill [{time.monotonic() - t0:6.1f} s] {message}", file=sys.stderr, flush=True)

    try:
        result = run_drill(plan, say)
    except (DrillError, ServiceError) as exc:
        print(f"drill: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            "drill: interrupted; every child stopped and the temp cluster removed", file=sys.stderr
        )
        raise typer.Exit(130) from None
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(summary(result))
    raise typer.Exit(0 if result["ok"] else 1)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
