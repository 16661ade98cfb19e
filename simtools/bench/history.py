"""`simctl bench --history` (scripts/bench-history): the engine and the operators' commands at
0, at a middle point (`--mid-runs`, default 1 M when N is more) and at N runs of history, then a
soak with retention on.

Everything runs on a private cluster (simtools.harness: initdb, a free loopback port) with the
server's settings and autovacuum on, as a production server has it (the shared test server
runs with it off), and a private redis-server. History is written by the engine itself: one
scheduler and two workers as real processes over `users` users with a 1 s interval, so every
user is due again before the engine comes back to it and the engine runs flat out. That is the
issue's operator's fill (100,000 users back to back), and every row is a real run at the model's
prices, so reconcile judges a real ledger (a bulk load would have to forge the balances, the
ledger and the slippage-moved prices run by run to stay clean: docs/benchmarks.md).

    history_probe.py    a command timed with its transactions sampled, status, sizes, claims
    history_results.py  the results, the ratios to the 0 point, the markdown table
    history.sql         the queries, beside them
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import platform
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from simconfig import Settings
from simtools.bench import queries as bench_sql
from simtools.bench.databases import scratch_database
from simtools.bench.history_probe import (
    CheckpointStats,
    StatusTime,
    Timed,
    checkpoint_stats,
    claim_stats,
    clock,
    copy_wallets,
    counts,
    history_bytes,
    history_query,
    pnl_sum_s,
    runs_taken,
    scheduler_events,
    status_time,
    table_sizes,
    timed_simctl,
    users_dead,
)
from simtools.bench.history_results import (
    Beside,
    CommandRun,
    Fill,
    HistoryResult,
    Point,
    Soak,
    SoakSample,
    Window,
    from_checkpoint,
    lag_stats,
    ratio,
    ratios,
    rows_since,
    sized,
)
from simtools.bench.pinned import ALWAYS, copied, cores
from simtools.bench.procs import BenchError, cpu_s, tree_cpu_s
from simtools.bench.shapes import local_postmaster
from simtools.harness.procs import Proc, last_line, run_simctl, simctl_argv, stop
from simtools.harness.services import PrivateCluster, PrivateRedis, ServiceError, cpu_list
from store.db import Conn, connect

Say = Callable[[str], None]

# Engine-written history the soak watches for growth (the state tables are updated in place).
CHECKPOINT_ERRORS = ("checkpoint.not_taken", "checkpoint.failed")  # the scheduler's log events
BUSY_RETRY_S = 3.0  # a history command refused for the lease is tried again this soon
POLL_S = 0.5  # how often the soak and the fill read the runs handed out
SOAK_RATE = 278.0  # runs/s: 1,000,000 users on hourly slots
LAG_DELAY_POLLS = 6  # the soak reads a poll's runs' lags this many polls later (batches commit)
STALL_S = 180.0  # no run in this long while filling: the engine is stuck, the bench stops
MID_RUNS = 1_000_000  # the middle point when --runs is more and --mid-runs is not given
CHECKPOINT_ROWS = int(Settings.model_fields["sim_checkpoint_rows"].default)


def mid_runs_for(runs: int, given: int | None) -> int | None:
    """The middle point: `given` (0: none), else MID_RUNS when `runs` is more, else none."""
    if given is not None:
        return given or None
    return MID_RUNS if runs > MID_RUNS else None


@dataclass(frozen=True)
class HistoryPlan:
    runs: int = 10_000_000
    users: int = 100_000
    interval_s: int = 1
    workers: int = 2
    measure_s: float = 30.0
    warmup_s: float = 5.0
    soak_min: float = 30.0
    # The soak's rate, runs a second (the users on slots spread over users / rate seconds):
    # 278 is 1,000,000 users on hourly slots (24 M runs a day, the platform). 0: back to
    # back, the engine flat out, as the fill runs.
    soak_rate: float = SOAK_RATE
    checkpoint_s: float = 60.0
    prune_s: float = 60.0
    sample_s: float = 60.0
    mid_runs: int | None = None  # a point between 0 and N (mid_runs_for: its default)
    checkpoint_rows: int = CHECKPOINT_ROWS  # the scheduler's SIM_CHECKPOINT_ROWS
    # Server settings for the private cluster on top of the server's own (--pg-set NAME=VALUE):
    # the server here is a development one (shared_buffers 128 MB); a platform's primary is not.
    pg_set: tuple[tuple[str, str], ...] = ()
    # Empty-database windows interleaved with the history's after the N point's (--beside; 0:
    # none): history, empty, history, ...
    beside: int = 2
    # The deployment's shape (--pinned): the cluster's postmaster (and every backend it forks)
    # on the first core, everything else (the bench, the engine, redis, the commands) on the
    # others; False: all of them share every core.
    pinned: bool = False


@dataclass(frozen=True)
class Available:
    """What the history commands of this checkout offer (the bench runs before and after they
    exist): `simctl checkpoint`, `simctl prune`, `reconcile --full`, the scheduler's own
    checkpoints (SIM_CHECKPOINT_INTERVAL_S)."""

    checkpoint: bool
    prune: bool
    reconcile_full: bool
    scheduler_checkpoints: bool

    def soak_refusal(self) -> str | None:
        missing = [
            name
            for name, have in (
                ("`simctl prune`", self.prune),
                (
                    "`simctl checkpoint` or SIM_CHECKPOINT_INTERVAL_S",
                    self.checkpoint or self.scheduler_checkpoints,
                ),
                ("`simctl reconcile --full`", self.reconcile_full),
            )
            if not have
        ]
        return None if not missing else f"this checkout has no {', '.join(missing)}"


def available(env: dict[str, str]) -> Available:
    def has(*args: str) -> tuple[bool, str]:
        done = run_simctl(list(args), env, timeout=120)
        return done.returncode == 0, done.stdout

    checkpoint, _ = has("checkpoint", "--help")
    prune, _ = has("prune", "--help")
    _, reconcile_help = has("reconcile", "--help")
    return Available(
        checkpoint=checkpoint,
        prune=prune,
        reconcile_full="--full" in reconcile_help,
        scheduler_checkpoints="sim_checkpoint_interval_s" in Settings.model_fields,
    )


def checkpoint_interval(seconds: float) -> int:
    """`seconds` within the bounds Settings puts on SIM_CHECKPOINT_INTERVAL_S."""
    value = max(1, round(seconds))
    info = Settings.model_fields.get("sim_checkpoint_interval_s")
    for bound in info.metadata if info is not None else []:
        if (ge := getattr(bound, "ge", None)) is not None:
            value = max(value, int(ge))
        if (le := getattr(bound, "le", None)) is not None:
            value = min(value, int(le))
    return value


def bind_process(cpus: list[int]) -> None:
    """This process on `cpus`: every thread of it (an affinity is a thread's, and a child takes
    the one of the thread that started it: asyncio.to_thread's are already there)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            continue  # a thread that ended meanwhile


@dataclass(frozen=True)
class Shape:
    """Where the processes run: `server` the cores of the cluster's postmaster and backends,
    `client` those of everything else (None for both: all share every core)."""

    every: list[int]
    server: list[int] | None = None
    client: list[int] | None = None

    @classmethod
    def of(cls, pinned: bool) -> Shape:
        have = cores()
        if not pinned:
            return cls(have)
        if len(have) < 2:
            raise BenchError(
                f"history: --pinned needs at least 2 cores; this process may use {len(have)}"
            )
        return cls(have, have[:1], have[1:])

    def describe(self) -> str:
        if self.server is None or self.client is None:
            return f"shared: Postgres and everything else on the same {len(self.every)} cores"
        return (
            f"pinned: Postgres on core {cpu_list(self.server)}, the bench, the engine, redis and "
            f"the commands on {cpu_list(self.client)}"
        )


class Engine:
    """One scheduler (logging at info: its `scheduler.pass` lines, the claim times, and its
    `checkpoint.verified` ones) and `workers` workers, real processes on the database at `url`;
    started and stopped as a group."""

    def __init__(
        self, env: dict[str, str], url: str, logdir: Path, workers: int, name: str
    ) -> None:
        # The engine needs no admin key (only prune does): none in its environment or its logs.
        self.env = {k: v for k, v in env.items() if k != "SIM_ADMIN_KEY"}
        self.env["DATABASE_URL"] = url
        self.logdir = logdir
        self.workers_n = workers
        self.name = name
        self.scheduler_log = logdir / f"{name}-scheduler.log"
        self.procs: list[Proc] = []
        self.started_at = self.stopped_at = 0.0  # host times (time.time())

    def start(self, checkpoint_s: int | None, checkpoint_rows: int = CHECKPOINT_ROWS) -> None:
        self.started_at = time.time()
        extra = (
            {}
            if checkpoint_s is None
            else {
                "SIM_CHECKPOINT_INTERVAL_S": str(checkpoint_s),
                "SIM_CHECKPOINT_ROWS": str(checkpoint_rows),
            }
        )
        self.procs = [
            Proc(
                simctl_argv("scheduler"),
                {**self.env, "SIM_LOG_LEVEL": "info", **extra},
                log=self.scheduler_log,
            )
        ]
        self.procs += [
            Proc(simctl_argv("worker"), self.env, log=self.logdir / f"{self.name}-worker{i}.log")
            for i in range(self.workers_n)
        ]

    def check(self) -> None:
        """BenchError naming a process that exited (with its last log line)."""
        for p in self.procs:
            if not p.alive():
                line = last_line(p.log) if p.log is not None else ""
                raise BenchError(f"history: a {self.name} process exited: {line or 'no output'}")

    def cpu_s(self) -> float:
        """CPU the scheduler and the workers have used so far, in seconds."""
        return cpu_s(p.pid for p in self.procs)

    def stop(self) -> None:
        stop(self.procs)
        self.stopped_at = time.time()

    def checkpoints(self) -> CheckpointStats:
        """The scheduler's own checkpoints verified while it ran."""
        return checkpoint_stats(self.scheduler_log, self.started_at, self.stopped_at or time.time())


class HistoryJobs:
    """The soak's (and, without the scheduler's own, the fill's) history commands, one at a time
    as the lease would have them anyway: `simctl checkpoint` every `checkpoint_s` (None: the
    scheduler takes them) and `simctl prune --keep-days 0` every `prune_s` (None: no retention),
    each timed with its transactions sampled."""

    def __init__(
        self, env: dict[str, str], url: str, checkpoint_s: float | None, prune_s: float | None
    ) -> None:
        self.env = env
        self.url = url
        self.every = {"checkpoint": checkpoint_s, "prune": prune_s}
        self.t0 = time.monotonic()
        self.last: dict[str, float] = {}
        self.task: asyncio.Task[None] | None = None
        self.running: str | None = None
        self.runs: dict[str, list[CommandRun]] = {"checkpoint": [], "prune": []}

    def tick(self, prune_ready: bool = True) -> None:
        """Start the job that is due, if none runs. `prune_ready`: a verified checkpoint exists
        (before the first one a prune has nothing to stand on and says so)."""
        if self.task is not None and not self.task.done():
            return
        now = time.monotonic()
        for name in ("checkpoint", "prune"):
            every = self.every[name]
            if name == "prune" and not prune_ready:
                continue
            if every is not None and now - self.last.get(name, self.t0) >= every:
                self.last[name] = now
                self.running = name
                self.task = asyncio.ensure_future(self._run(name, now - self.t0))
                return

    async def _run(self, name: str, at_s: float) -> None:
        args = (
            ["checkpoint", "--json"]
            if name == "checkpoint"
            else ["prune", "--keep-days", "0", "--json"]
        )
        try:
            t = await timed_simctl(args, self.env, self.url, f"simbench-{name}")
            every = self.every[name]
            if t.exit_code == 1 and "history lease" in t.stderr and every is not None:
                # Refused while the scheduler's checkpoint held the lease: again in a moment.
                self.last[name] = time.monotonic() - every + min(every, BUSY_RETRY_S)
            self.runs[name].append(
                CommandRun(
                    f"simctl {' '.join(args)}",
                    round(at_s, 1),
                    t.seconds,
                    t.exit_code,
                    t.output,
                    t.longest_transaction_s,
                    t.stderr,
                )
            )
        finally:
            self.running = None

    @property
    def busy(self) -> str | None:
        return self.running if self.task is not None and not self.task.done() else None

    async def drain(self) -> None:
        if self.task is not None:
            await self.task


def base_env(settings: Settings, redis_url: str, admin_key: str) -> dict[str, str]:
    """The processes' and commands' environment: no SIM_ setting of ours but the batch size and
    concurrency the report states, the market seed, JSON logs, a 100 ms scheduler pass, and an
    admin key of this run's own (prune needs one; it is accepted by its digest only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIM_")}
    env.update(
        REDIS_URL=redis_url,
        SIM_BATCH_SIZE=str(settings.sim_batch_size),
        SIM_WORKER_CONCURRENCY=str(settings.sim_worker_concurrency),
        **({} if settings.sim_seed is None else {"SIM_SEED": str(settings.sim_seed)}),
        SIM_LOG_LEVEL="warning",
        SIM_LOG_JSON="true",
        SIM_SCHEDULER_INTERVAL_MS="100",
        SIM_ADMIN_KEY=admin_key,
        SIM_ADMIN_KEYS_SHA256=hashlib.sha256(admin_key.encode()).hexdigest(),
    )
    return env


async def cluster_conf(settings: Settings) -> tuple[dict[str, str], int, int]:
    """The server's settings as the pinned shape copies them, with autovacuum on (a production
    server vacuums; this bench measures the engine as it would run there); the server's major
    version and WAL segment size."""
    conn = await connect(settings.database_url)
    try:
        server = await bench_sql.server(conn)
        conf = copied(await bench_sql.server_settings(conn, ALWAYS))
        segment_mb = await bench_sql.wal_segment_mb(conn)
    finally:
        await conn.close()
    conf.update(autovacuum="on", track_counts="on")
    conf.update(primary_sizing(conf, ram_bytes()))
    return conf, server.version_num // 10000, segment_mb


# A primary's sizing where the server sets less (this machine's is a development server:
# shared_buffers 128 MB, max_wal_size 1 GB). shared_buffers: a quarter of the RAM, the usual
# rule, up to 8 GB. max_wal_size: room for checkpoints to come on checkpoint_timeout at the
# engine's write rate (about 2 KB of WAL a run at 14,000 runs/s is 28 MB/s, 8.4 GB in 5 min),
# not every few seconds on WAL volume, which Postgres itself warns of ("checkpoints are occurring
# too frequently", checkpoint_warning) and which makes every page's first change after each one
# write the whole page again. docs/operations.md, "Running for a year", gives the arithmetic.
PRIMARY_SHARED_BUFFERS_MAX = 8 * 2**30
PRIMARY_MAX_WAL_MB = 16 * 1024


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def primary_sizing(conf: dict[str, str], ram: int) -> dict[str, str]:
    """The settings a primary sized for the engine would have where `conf` (the server's, in
    pg_settings' units: shared_buffers in 8 kB pages, max_wal_size in MB) has less; a server
    that already has more keeps its own."""
    out = {}
    buffers = min(ram // 4, PRIMARY_SHARED_BUFFERS_MAX) // 8192
    if int(conf.get("shared_buffers", "0")) < buffers:
        out["shared_buffers"] = str(buffers)
    if int(conf.get("max_wal_size", "0")) < PRIMARY_MAX_WAL_MB:
        out["max_wal_size"] = str(PRIMARY_MAX_WAL_MB)
    return out


async def back_to_back(conn: Conn, interval_s: int) -> None:
    await conn.execute(history_query("hist_back_to_back"), interval_s)


def soak_interval(plan: HistoryPlan) -> int:
    """Every user's interval in the soak: users / rate seconds (1, back to back, for rate 0)."""
    if plan.soak_rate <= 0:
        return 1
    return max(1, round(plan.users / plan.soak_rate))


async def window(conn: Conn, engine: Engine, seconds: float) -> Window:
    """Runs committed in `seconds` of the running engine, and the claims logged meanwhile."""
    engine.check()
    start_runs = await runs_taken(conn)
    postmaster = local_postmaster(
        engine.env["DATABASE_URL"], await conn.fetchval("SELECT pg_backend_pid()")
    )
    wal0 = await conn.fetchrow(history_query("hist_server_counters"))
    t0, h0 = await clock(conn), time.time()
    cpu0 = engine.cpu_s(), (tree_cpu_s(postmaster) if postmaster else None)
    await asyncio.sleep(seconds)
    cpu1 = engine.cpu_s(), (tree_cpu_s(postmaster) if postmaster else None)
    t1, h1 = await clock(conn), time.time()
    wal1 = await conn.fetchrow(history_query("hist_server_counters"))
    assert wal0 is not None and wal1 is not None
    engine.check()
    await asyncio.sleep(2)  # the batches in flight at t1 commit
    # finished_at is stamped as each row is inserted: ids from well before the window's start
    # cannot fall in it, so the count reads an id range, not the table.
    done = await conn.fetchrow(
        history_query("hist_runs_finished_between"), max(0, start_runs - 100_000), t0, t1
    )
    assert done is not None
    runs: int = done["runs"]
    span = (t1 - t0).total_seconds()
    return Window(
        history_runs_at_start=start_runs,
        seconds=round(span, 2),
        runs=runs,
        runs_per_s=round(runs / span, 1),
        claim=claim_stats(engine.scheduler_log, h0, h1),
        trades_per_run=round(done["trades"] / runs, 3) if runs else None,
        wal_bytes_per_run=round((wal1["bytes"] - wal0["bytes"]) / runs, 1) if runs else None,
        wal_fpi_per_run=round((wal1["fpi"] - wal0["fpi"]) / runs, 3) if runs else None,
        checkpoints_timed=wal1["timed"] - wal0["timed"],
        checkpoints_requested=wal1["requested"] - wal0["requested"],
        autovacuums=wal1["autovacuums"] - wal0["autovacuums"],
        engine_cpu_ms_per_run=round((cpu1[0] - cpu0[0]) * 1000 / runs, 4) if runs else None,
        db_cpu_ms_per_run=(
            round((cpu1[1] - cpu0[1]) * 1000 / runs, 4)
            if runs and cpu0[1] is not None and cpu1[1] is not None
            else None
        ),
    )


async def fill_to(
    conn: Conn, engine: Engine, target: int, say: Say, jobs: HistoryJobs | None
) -> None:
    """Until the engine has handed out `target` run ids, saying how far every 15 s."""
    said = last_progress = time.monotonic()
    seen = await runs_taken(conn)
    rate_from = (said, seen)
    while seen < target:
        engine.check()
        if jobs is not None:
            jobs.tick()
        await asyncio.sleep(POLL_S)
        now, runs = time.monotonic(), await runs_taken(conn)
        if runs > seen:
            last_progress = now
        elif now - last_progress > STALL_S:
            raise BenchError(f"history: no run written for {STALL_S:.0f} s at {runs} runs")
        seen = runs
        if now - said >= 15:
            rate = (runs - rate_from[1]) / (now - rate_from[0])
            say(f"history: {runs:,} of {target:,} runs ({rate:,.0f} runs/s)")
            said, rate_from = now, (now, runs)


@dataclass
class _Idle:
    """What is measured at a point with the engine stopped."""

    counts: dict[str, int]
    reconcile: Timed
    checkpoint: Timed | None
    reconcile_after: Timed | None
    reconcile_full: Timed | None
    status: StatusTime
    pnl_s: float
    sizes: dict[str, int]
    dead: dict[str, int]


async def bench_checkpoint(env: dict[str, str], url: str, wait_s: float) -> Timed:
    """`simctl checkpoint --json`, timed; tried again while a checkpoint the stopped scheduler
    left (its lease not yet given back or run out) holds the history lease, for up to wait_s."""
    until = time.monotonic() + wait_s
    while True:
        t = await timed_simctl(["checkpoint", "--json"], env, url, "simbench-checkpoint")
        if not (t.exit_code == 1 and "history lease" in t.stderr) or time.monotonic() > until:
            return t
        await asyncio.sleep(BUSY_RETRY_S)


async def idle_point(
    conn: Conn, env: dict[str, str], url: str, avail: Available, say: Say, label: str
) -> _Idle:
    """Sizes; reconcile as the engine left it (rows since the latest checkpoint wherever the
    scheduler's cycle was); a checkpoint by the bench and reconcile again (rows since: none);
    reconcile --full, status, the sim_pnl sum."""
    say(f"history: at {label}: sizes, reconcile, checkpoint, reconcile, status, sim_pnl")
    sizes = await table_sizes(conn)
    dead = await users_dead(conn)
    found = await counts(conn)
    reconcile = await timed_simctl(["reconcile", "--json"], env, url, "simbench-reconcile")
    checkpoint = after = None
    if avail.checkpoint:
        lease_s = float(Settings.model_fields["sim_history_lease_s"].default or 60)
        checkpoint = await bench_checkpoint(env, url, lease_s + 15)
        after = await timed_simctl(["reconcile", "--json"], env, url, "simbench-reconcile")
    full = (
        await timed_simctl(["reconcile", "--full", "--json"], env, url, "simbench-reconcile-full")
        if avail.reconcile_full
        else None
    )
    status = await status_time(env, url)
    pnl = await pnl_sum_s(conn)
    return _Idle(found, reconcile, checkpoint, after, full, status, pnl, sizes, dead)


NO_CHECKPOINTS = CheckpointStats(0, None, None, None, None, None)


def make_point(
    label: str,
    idle: _Idle,
    engine: Window,
    scheduler: CheckpointStats,
    with_checkpoints: Window | None,
) -> Point:
    return Point(
        label=label,
        runs=idle.counts["runs"],
        trades=idle.counts["trades"],
        ledger_rows=idle.counts["ledger_rows"],
        engine=engine,
        engine_with_checkpoints=with_checkpoints,
        reconcile=idle.reconcile,
        reconcile_rows_since=rows_since(idle.reconcile),
        reconcile_from_checkpoint=from_checkpoint(idle.reconcile),
        checkpoint=idle.checkpoint,
        reconcile_after_checkpoint=idle.reconcile_after,
        reconcile_after_rows_since=rows_since(idle.reconcile_after),
        scheduler_checkpoints=scheduler,
        reconcile_full=idle.reconcile_full,
        status=idle.status,
        pnl_sum_s=idle.pnl_s,
        table_bytes=idle.sizes,
        history_bytes=history_bytes(idle.sizes),
        users_dead=idle.dead,
    )


async def latest_verified(conn: Conn) -> int:
    n: int = await conn.fetchval(history_query("hist_latest_verified"))
    return n


async def checkpoint_states(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch(history_query("hist_checkpoints"), 0)
    out: dict[str, int] = {}
    for r in rows:
        out[r["state"]] = out.get(r["state"], 0) + 1
    return out


async def run_history(
    settings: Settings, plan: HistoryPlan, command: str, say: Say
) -> HistoryResult:
    started = time.monotonic()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    conf, major, segment_mb = await cluster_conf(settings)
    conf.update(dict(plan.pg_set))
    cluster = PrivateCluster(conf, major=major, wal_segment_mb=segment_mb)
    say(
        f"history: initdb a private cluster ({len(conf)} of the server's settings, autovacuum "
        f"on, shared_buffers {sized(conf, 'shared_buffers', 8192)}, max_wal_size "
        f"{sized(conf, 'max_wal_size', 2**20)})"
    )
    shape = Shape.of(plan.pinned)
    try:
        await asyncio.to_thread(cluster.init)
        await asyncio.to_thread(cluster.start, shape.server)
    except ServiceError as exc:
        await asyncio.to_thread(cluster.close)
        raise BenchError(f"history: {exc}") from None
    if shape.client is not None:
        say(f"history: {shape.describe()}")
        # Everything this process starts from here on inherits the client cores.
        bind_process(shape.client)
    redis: PrivateRedis | None = None
    try:
        try:
            redis = PrivateRedis()
            await asyncio.to_thread(redis.start)
        except ServiceError as exc:
            raise BenchError(f"history: {exc}") from None
        logdir = cluster.dir / "logs"
        logdir.mkdir()
        env = base_env(settings, redis.url, secrets.token_hex(24))
        avail = await asyncio.to_thread(available, {**env, "DATABASE_URL": cluster.url()})
        private = await connect(cluster.url())
        try:
            version = (await bench_sql.server(private)).version
        finally:
            await private.close()
        scheduler_cp = (
            checkpoint_interval(plan.checkpoint_s) if avail.scheduler_checkpoints else None
        )
        checkpoints_by = (
            f"the scheduler's, SIM_CHECKPOINT_INTERVAL_S={scheduler_cp}, "
            f"SIM_CHECKPOINT_ROWS={plan.checkpoint_rows}"
            if scheduler_cp is not None
            else f"`simctl checkpoint` every {plan.checkpoint_s:g} s"
            if avail.checkpoint
            else "not available"
        )
        zero, mid, full, fill, beside = await fill_and_measure(
            cluster, env, plan, settings, avail, scheduler_cp, logdir, say
        )
        soak = await run_soak(cluster, env, plan, settings, avail, scheduler_cp, logdir, say)
    finally:
        try:
            if redis is not None:
                redis.close()
            await asyncio.to_thread(cluster.close)
        finally:
            if shape.client is not None:
                bind_process(shape.every)
    result = HistoryResult(
        when=when,
        command=command,
        machine={
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "postgres": version,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        settings={
            "runs": plan.runs,
            "users": plan.users,
            "interval_s": plan.interval_s,
            "workers": plan.workers,
            "batch_size": settings.sim_batch_size,
            "worker_concurrency": settings.sim_worker_concurrency,
            "measure_s": plan.measure_s,
            "mid_runs": plan.mid_runs,
            "checkpoint_s": scheduler_cp if scheduler_cp is not None else plan.checkpoint_s,
            "checkpoint_rows": plan.checkpoint_rows if scheduler_cp is not None else None,
            "checkpoints": checkpoints_by,
            "pg_set": dict(plan.pg_set),
            "beside": plan.beside,
            "shape": shape.describe(),
        },
        cluster=conf,
        zero=zero,
        mid=mid,
        full=full,
        fill=fill,
        soak=soak,
        beside=beside,
    )
    result.ratios = ratios(zero, full)
    result.ratios["runs_per_s_beside"] = beside.against(full.engine) if beside else None
    result.ratios_mid = ratios(mid, full) if mid is not None else {}
    result.seconds = round(time.monotonic() - started, 1)
    return result


@asynccontextmanager
async def seeded_database(
    cluster: PrivateCluster, plan: HistoryPlan, settings: Settings, suffix: str
) -> AsyncIterator[tuple[str, Conn]]:
    """A scratch database of the plan's users on the cluster, none of them due yet, and a
    connection to it; dropped after."""
    name = f"simbench_{os.getpid()}_{suffix}"
    async with scratch_database(
        cluster.url(), name, users=plan.users, due=False, settings=settings
    ) as url:
        conn = await connect(url)
        try:
            await bench_sql.park(conn)
            yield url, conn
        finally:
            await conn.close()


async def fill_and_measure(
    cluster: PrivateCluster,
    env: dict[str, str],
    plan: HistoryPlan,
    settings: Settings,
    avail: Available,
    scheduler_cp: int | None,
    logdir: Path,
    say: Say,
) -> tuple[Point, Point | None, Point, Fill, Beside | None]:
    """The 0 point (before the engine starts) and the engine alone's window at 0; then the
    fill with the scheduler's checkpoints on to --mid-runs (its window), the engine stopped for
    the middle point's commands and the engine alone's window there, the fill again on to
    --runs (its window), stopped for the N point's commands and the engine alone's window;
    then, --beside times, the engine alone on a fresh empty database beside it and on the
    history once more."""
    say(f"history: {plan.users:,} users, migrated and seeded")
    async with seeded_database(cluster, plan, settings, "history") as (url, conn):
        # Without the scheduler's own checkpoints, the bench takes them (checkpoints on).
        jobs = (
            HistoryJobs({**env, "DATABASE_URL": url}, url, plan.checkpoint_s, None)
            if scheduler_cp is None and avail.checkpoint
            else None
        )
        # Once untimed: a first simctl of a fresh install compiles its modules.
        await timed_simctl(["reconcile", "--json"], env, url, "simbench-warm")
        zero_idle = await idle_point(conn, env, url, avail, say, "0 runs")
        await back_to_back(conn, plan.interval_s)
        w0 = await alone_window(conn, env, url, logdir, plan, "0", say)
        fills: list[Engine] = []
        spans: list[tuple[float, int]] = []  # (seconds, runs) of each fill engine

        async def fill_window(target: int, label: str) -> Window:
            engine = Engine(env, url, logdir, plan.workers, label)
            fills.append(engine)
            engine.start(scheduler_cp, plan.checkpoint_rows)
            t0, r0 = time.monotonic(), await runs_taken(conn)
            try:
                say(f"history: filling to {target:,} runs")
                await fill_to(conn, engine, target, say, jobs)
                say(
                    f"history: engine window at {target:,} runs, with the scheduler's "
                    f"checkpoints ({plan.measure_s:g} s)"
                )
                w = await window(conn, engine, plan.measure_s)
                if jobs is not None:
                    await jobs.drain()
            finally:
                engine.stop()
            spans.append((time.monotonic() - t0, await runs_taken(conn) - r0))
            return w

        mid: Point | None = None
        if plan.mid_runs is not None:
            wm = await fill_window(plan.mid_runs, "fill")
            mid_idle = await idle_point(
                conn, env, url, avail, say, f"{await runs_taken(conn):,} runs"
            )
            wm_alone = await alone_window(conn, env, url, logdir, plan, "mid", say)
            mid = make_point("mid", mid_idle, wm_alone, fills[-1].checkpoints(), wm)
        wn = await fill_window(plan.runs, "fill-after-mid" if mid is not None else "fill")
        fill_s = sum(t for t, _ in spans)
        written = await runs_taken(conn)
        fill = Fill(
            runs_target=plan.runs,
            runs_written=written,
            seconds=round(fill_s, 1),
            runs_per_s=round(sum(n for _, n in spans) / fill_s, 1),
            checkpoints=await checkpoint_states(conn),
            checkpoint_errors=[
                e for one in fills for e in scheduler_events(one.scheduler_log, CHECKPOINT_ERRORS)
            ],
        )
        full_idle = await idle_point(conn, env, url, avail, say, f"{written:,} runs")
        wn_alone = await alone_window(conn, env, url, logdir, plan, "N", say)
        empty: list[Window] = []
        again: list[Window] = []
        for n in range(1, plan.beside + 1):
            empty.append(await empty_beside(cluster, env, plan, settings, logdir, say, n, conn))
            again.append(await alone_window(conn, env, url, logdir, plan, f"N, again ({n})", say))
    zero = make_point("0", zero_idle, w0, NO_CHECKPOINTS, None)
    full = make_point("N", full_idle, wn_alone, fills[-1].checkpoints(), wn)
    return zero, mid, full, fill, Beside(tuple(empty), tuple(again)) if empty else None


async def empty_beside(
    cluster: PrivateCluster,
    env: dict[str, str],
    plan: HistoryPlan,
    settings: Settings,
    logdir: Path,
    say: Say,
    n: int,
    history: Conn,
) -> Window:
    """The engine alone on an empty database of the same users holding the history's wallets
    (`history`'s, as the N point left them), beside the N point (the `n`th: a scratch database
    of its own on the same cluster, dropped after). Without the wallets it would not be the same
    run: users who hold USD alone, as fresh ones do, make fewer trades a run (a sell needs a
    holding)."""
    say(f"history: an empty database of {plan.users:,} users beside the N point ({n})")
    async with seeded_database(cluster, plan, settings, f"beside{n}") as (url, conn):
        await copy_wallets(history, conn)
        await back_to_back(conn, plan.interval_s)
        return await alone_window(conn, env, url, logdir, plan, f"empty beside N ({n})", say)


async def alone_window(
    conn: Conn,
    env: dict[str, str],
    url: str,
    logdir: Path,
    plan: HistoryPlan,
    label: str,
    say: Say,
) -> Window:
    """The engine alone at this much history: `users` and `portfolio` vacuumed and a CHECKPOINT
    taken, then a scheduler with no checkpoints of its own (SIM_CHECKPOINT_INTERVAL_S=0) and the
    workers, started afresh; its window begins once every
    user has run once (at least `warmup_s` in: at first every user is due at once, a burst whose
    claims walk every leased due user; after one pass the slots have spread as they then stay).
    The same at every point, so what differs between points is the history alone; what a
    checkpoint costs is measured on its own (it follows the rows since the last one, not the
    history), and the fill's windows show the engine with the scheduler's checkpoints."""
    # The same state at every point: the tables the engine updates in place vacuumed (at 0 they
    # are fresh; after a flat-out fill `users` holds row versions autovacuum has not reached
    # yet) and a checkpoint just taken (at 0 none has come since the load; after a fill one may
    # be minutes or seconds behind, and a page's first change after one writes it whole).
    for statement in ("VACUUM (ANALYZE) users, portfolio", "CHECKPOINT"):
        await conn.execute(statement)
    engine = Engine(env, url, logdir, plan.workers, f"alone-{label}")
    engine.start(0, 0)
    try:
        start = await runs_taken(conn)
        await asyncio.sleep(plan.warmup_s)
        await fill_to(conn, engine, start + plan.users, say, None)
        say(f"history: engine window, the engine alone, at {label} ({plan.measure_s:g} s)")
        return await window(conn, engine, plan.measure_s)
    finally:
        engine.stop()


async def run_soak(
    cluster: PrivateCluster,
    env: dict[str, str],
    plan: HistoryPlan,
    settings: Settings,
    avail: Available,
    scheduler_cp: int | None,
    logdir: Path,
    say: Say,
) -> Soak:
    """The engine on a fresh database of the same users for `soak_min` (at `soak_rate`: the
    users on slots spread over their interval; 0: flat out, back to back), checkpoints
    every `checkpoint_s`, `prune --keep-days 0` every `prune_s`, a sample every `sample_s`;
    then `reconcile --full`, slots run twice, and each user's run count against the history."""
    if plan.soak_min <= 0:
        return Soak(available=False, reason="--soak-min 0")
    reason = avail.soak_refusal()
    if reason is not None:
        say(f"history: soak with retention: not available ({reason})")
        return Soak(available=False, reason=reason)
    soak = Soak(
        available=True,
        reason="",
        minutes=plan.soak_min,
        checkpoint_s=plan.checkpoint_s if scheduler_cp is None else scheduler_cp,
        prune_s=plan.prune_s,
        checkpoints_by="the scheduler" if scheduler_cp is not None else "simctl checkpoint",
    )
    soak.interval_s = interval = soak_interval(plan)
    soak.rate_per_s = round(plan.users / interval, 1) if plan.soak_rate > 0 else None
    say(
        f"history: soak with retention, {plan.soak_min:g} min, every user every {interval} s"
        + ("" if soak.rate_per_s is None else f" ({soak.rate_per_s:,} runs/s on slots)")
    )
    async with seeded_database(cluster, plan, settings, "soak") as (url, conn):
        cmd_env = {**env, "DATABASE_URL": url}
        engine = Engine(env, url, logdir, plan.workers, "soak")
        engine.start(scheduler_cp, plan.checkpoint_rows)
        jobs = HistoryJobs(
            cmd_env, url, plan.checkpoint_s if scheduler_cp is None else None, plan.prune_s
        )
        try:
            await conn.execute(history_query("hist_spread_slots"), interval)
            await _soak_loop(conn, engine, jobs, cmd_env, url, plan, soak, say)
            await jobs.drain()
        finally:
            engine.stop()
        soak.prunes = jobs.runs["prune"]
        soak.checkpoint_runs = jobs.runs["checkpoint"]
        say("history: soak done: reconcile --full, slots, run counts")
        soak.reconcile_full = await timed_simctl(
            ["reconcile", "--full", "--json"],
            cmd_env,
            url,
            "simbench-reconcile-full",
        )
        soak.doubled_slots = await conn.fetchval(history_query("hist_doubled_slots"))
        row = await conn.fetchrow(history_query("hist_run_counts"))
        assert row is not None
        soak.run_counts = {k: int(row[k]) for k in ("users_differing", "counted", "explained")}
        soak.checkpoints = await checkpoint_states(conn)
        soak.checkpoint_errors = scheduler_events(engine.scheduler_log, CHECKPOINT_ERRORS)
    summarise_soak(soak)
    return soak


async def _soak_loop(
    conn: Conn,
    engine: Engine,
    jobs: HistoryJobs,
    env: dict[str, str],
    url: str,
    plan: HistoryPlan,
    soak: Soak,
    say: Say,
) -> None:
    t0 = time.monotonic()
    end = t0 + plan.soak_min * 60
    rates: list[tuple[float, int, frozenset[str]]] = []
    # Each poll's server time and busy set; its runs' lags are read LAG_DELAY_POLLS later.
    polls: list[tuple[datetime, frozenset[str]]] = []
    lags: dict[str, list[float]] = {"pruning": [], "quiet": []}
    sampling: asyncio.Task[None] | None = None
    last_sample = (t0, time.time(), await runs_taken(conn))

    async def sample(at: float, since: tuple[float, float, int]) -> None:
        sizes = await table_sizes(conn_side)
        dead = await users_dead(conn_side)
        runs = await runs_taken(conn_side)
        rec = await timed_simctl(["reconcile", "--json"], env, url, "simbench-reconcile")
        s = SoakSample(
            at_s=round(at - t0, 1),
            runs=runs,
            runs_per_s=round((runs - since[2]) / max(at - since[0], 1e-9), 1),
            history_bytes=history_bytes(sizes),
            engine_bytes=sum(sizes.values()),
            table_bytes=sizes,
            reconcile_s=rec.seconds,
            reconcile_longest_transaction_s=rec.longest_transaction_s,
            reconcile_clean=rec.exit_code == 0,
            claim=claim_stats(engine.scheduler_log, since[1], time.time()),
            users_dead=dead.get("dead", 0),
        )
        soak.samples.append(s)
        say(
            f"history: soak {s.at_s:g} s: {s.runs:,} runs, {s.runs_per_s} runs/s, history "
            f"{s.history_bytes / 2**20:,.1f} MB, reconcile {s.reconcile_s} s, claim median "
            f"{s.claim.median_ms} ms"
        )

    conn_side = await connect(url)
    try:
        while time.monotonic() < end:
            engine.check()
            jobs.tick(prune_ready=await latest_verified(conn) > 0)
            now = time.monotonic()
            busy = {b for b in (jobs.busy,) if b}
            if sampling is not None and not sampling.done():
                busy.add("reconcile")
            rates.append((now, await runs_taken(conn), frozenset(busy)))
            polls.append((await clock(conn), frozenset(busy)))
            if len(polls) > LAG_DELAY_POLLS:
                (a, busy_a), (b, busy_b) = polls[-LAG_DELAY_POLLS - 1], polls[-LAG_DELAY_POLLS]
                kind = (
                    "pruning"
                    if "prune" in busy_a or "prune" in busy_b
                    else "quiet"
                    if not busy_a and not busy_b
                    else None
                )
                if kind is not None:
                    lags[kind] += [
                        r["lag"] for r in await conn.fetch(history_query("hist_lags"), a, b)
                    ]
            if now - last_sample[0] >= plan.sample_s and (sampling is None or sampling.done()):
                if sampling is not None:
                    await sampling  # raise what it raised
                since = last_sample
                last_sample = (now, time.time(), rates[-1][1])
                sampling = asyncio.ensure_future(sample(now, since))
            await asyncio.sleep(POLL_S)
        if sampling is not None:
            await sampling
    finally:
        await conn_side.close()
    pruning = quiet = (0, 0.0)
    for (ta, ra, ba), (tb, rb, bb) in itertools.pairwise(rates):
        if "prune" in ba or "prune" in bb:
            pruning = (pruning[0] + rb - ra, pruning[1] + tb - ta)
        elif not ba and not bb:
            quiet = (quiet[0] + rb - ra, quiet[1] + tb - ta)
    soak.runs_per_s_pruning = round(pruning[0] / pruning[1], 1) if pruning[1] else None
    soak.runs_per_s_quiet = round(quiet[0] / quiet[1], 1) if quiet[1] else None
    soak.pruning_vs_quiet = ratio(soak.runs_per_s_pruning, soak.runs_per_s_quiet)
    soak.lag_pruning = lag_stats(lags["pruning"])
    soak.lag_quiet = lag_stats(lags["quiet"])


def summarise_soak(soak: Soak) -> None:
    """Growth, reconcile and claim over the soak against its first full window: the first
    sample taken once the first prune that exited 0 finished and every user has had a whole
    interval, a checkpoint and a prune since the start (retention keeps each user's latest
    run, so on slots the window is only full once every user has run; back to back, at once)."""
    done = [p.at_s + p.seconds for p in soak.prunes if p.exit_code == 0]
    if not done or not soak.samples:
        return
    full_at = max(min(done), soak.interval_s + soak.checkpoint_s + soak.prune_s)
    after = [s for s in soak.samples if s.at_s >= full_at]
    if len(after) < 2:
        return
    first = after[0]
    soak.first_full_window_at_s = first.at_s
    last_third = soak.samples[len(soak.samples) * 2 // 3 :]
    soak.growth_last_third_vs_first_window = ratio(
        max(s.history_bytes for s in last_third), first.history_bytes
    )
    soak.engine_growth_last_third_vs_first_window = ratio(
        max(s.engine_bytes for s in last_third), first.engine_bytes
    )
    soak.reconcile_last_vs_first = ratio(soak.samples[-1].reconcile_s, first.reconcile_s)
    soak.claim_last_vs_first = ratio(soak.samples[-1].claim.median_ms, first.claim.median_ms)
