"""The history bench's typed results (`as_json` is the --json file's content, what
tests/acceptance/test_bench_history.py reads) and its markdown table. Every ratio is against the
0-history point, or the middle one (`--mid-runs`), measured in the same run; no figure is judged
against a threshold here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

from simtools.bench.history_probe import CheckpointStats, ClaimStats, StatusTime, Timed


@dataclass(frozen=True)
class Window:
    """The engine over a fixed interval (the same users and processes at every point): runs
    committed in it, and the scheduler's claims logged in it."""

    history_runs_at_start: int
    seconds: float
    runs: int
    runs_per_s: float
    claim: ClaimStats
    # The server's WAL over the window (pg_stat_wal), per run committed in it: bytes, and full
    # page images (a page's first change after a checkpoint writes the whole page).
    wal_bytes_per_run: float | None = None
    wal_fpi_per_run: float | None = None
    # The server's checkpoints that began in the window: on checkpoint_timeout, and requested
    # (max_wal_size's worth of WAL written since the last one). Requested ones mean the WAL rate
    # outruns max_wal_size: every page's first change after each writes the whole page again.
    checkpoints_timed: int | None = None
    checkpoints_requested: int | None = None
    # CPU per run committed in the window, in ms: the scheduler's and the workers' processes,
    # and the whole private cluster's (every backend, the checkpointer, the WAL writer,
    # autovacuum). On a box the engine keeps busy, their sum is what a run costs.
    engine_cpu_ms_per_run: float | None = None
    db_cpu_ms_per_run: float | None = None
    # Autovacuums and autoanalyzes of any table done in the window (their CPU is in the
    # database's): as history grows they come less often but each reads more.
    autovacuums: int | None = None
    # Trades per run committed in the window: a run's work follows its user's wallet (a sell
    # needs a holding), so runs of fresh users, who hold USD alone, make fewer trades.
    trades_per_run: float | None = None


def rows_since(t: Timed | None) -> int | None:
    """The engine rows a reconcile summed on top of its checkpoint (its --json `rows_since`,
    all tables together); None without that output."""
    out = t.output if t is not None else None
    if not isinstance(out, dict) or not isinstance(out.get("rows_since"), dict):
        return None
    return sum(v for v in out["rows_since"].values() if isinstance(v, int))


def from_checkpoint(t: Timed | None) -> int | None:
    """The checkpoint a reconcile judged from (its --json `from_checkpoint`; None: the start)."""
    out = t.output if t is not None else None
    base = out.get("from_checkpoint") if isinstance(out, dict) else None
    return base if isinstance(base, int) else None


@dataclass(frozen=True)
class Point:
    """One history size: what was written, the engine's window, and the operators' commands
    timed with the engine stopped. `reconcile` is as the engine left it (rows since the latest
    checkpoint wherever the scheduler's cycle was); `checkpoint` is one the bench then took
    (`simctl checkpoint --json`: the cost of checkpointing those rows) and
    `reconcile_after_checkpoint` the reconcile right after it (rows since: none)."""

    label: str
    runs: int
    trades: int
    ledger_rows: int
    engine: Window  # the engine alone: no checkpoint running (history.alone_window)
    engine_with_checkpoints: Window | None  # the fill's own, the scheduler's checkpoints on
    reconcile: Timed
    reconcile_rows_since: int | None  # engine rows since its checkpoint (None: no such output)
    reconcile_from_checkpoint: int | None  # the checkpoint it judged from (None: the start)
    checkpoint: Timed | None  # None: `simctl checkpoint` not available
    reconcile_after_checkpoint: Timed | None  # None: no checkpoint taken
    reconcile_after_rows_since: int | None
    scheduler_checkpoints: CheckpointStats  # the scheduler's own, during the fill before it
    reconcile_full: Timed | None  # None: `reconcile --full` not available
    status: StatusTime
    pnl_sum_s: float
    table_bytes: dict[str, int]
    history_bytes: int  # trades + transactions + sim_runs
    users_dead: dict[str, int]


@dataclass(frozen=True)
class Fill:
    runs_target: int
    runs_written: int
    seconds: float
    runs_per_s: float
    checkpoints: dict[str, int]  # state -> how many were taken during the fill
    # The scheduler's checkpoint.not_taken / checkpoint.failed events: {event, timestamp, error}.
    checkpoint_errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class CommandRun:
    """A history command the soak ran: when (seconds into the soak), how long, its exit code and
    --json output."""

    command: str
    at_s: float
    seconds: float
    exit_code: int
    output: Any = None
    longest_transaction_s: float = 0.0
    stderr: str = ""  # the reason of a refusal

    @property
    def busy(self) -> bool:
        """Refused because another history job (the scheduler's checkpoint) held the lease: the
        documented answer to two history jobs at once, not a failure."""
        return self.exit_code == 1 and "history lease" in self.stderr

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 or self.busy


@dataclass(frozen=True)
class SoakSample:
    at_s: float
    runs: int  # sim_runs ids handed out so far
    runs_per_s: float  # over the period since the previous sample
    history_bytes: int
    engine_bytes: int  # every engine-written table measured
    table_bytes: dict[str, int]
    reconcile_s: float
    reconcile_longest_transaction_s: float
    reconcile_clean: bool
    claim: ClaimStats
    users_dead: int


@dataclass(frozen=True)
class LagStats:
    """How late runs started after their slots (seconds): how many runs, median, p95, max."""

    runs: int
    median_s: float | None
    p95_s: float | None
    max_s: float | None


def lag_stats(lags: list[float]) -> LagStats:
    if not lags:
        return LagStats(0, None, None, None)
    xs = sorted(lags)

    def at(q: float) -> float:
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)

    return LagStats(len(xs), at(0.5), at(0.95), round(xs[-1], 3))


@dataclass
class Soak:
    available: bool
    reason: str  # why not, when not available
    minutes: float = 0.0
    checkpoint_s: float = 0.0
    prune_s: float = 0.0
    interval_s: int = 1  # every user's interval: the soak's schedule
    rate_per_s: float | None = None  # users / interval_s; None: back to back, flat out
    checkpoints_by: str = ""  # "scheduler" (SIM_CHECKPOINT_INTERVAL_S) or "simctl checkpoint"
    samples: list[SoakSample] = field(default_factory=list)
    prunes: list[CommandRun] = field(default_factory=list)
    checkpoint_runs: list[CommandRun] = field(default_factory=list)
    checkpoints: dict[str, int] = field(default_factory=dict)  # state -> count, from the table
    checkpoint_errors: list[dict[str, Any]] = field(default_factory=list)  # the scheduler's
    reconcile_full: Timed | None = None
    doubled_slots: int | None = None
    run_counts: dict[str, int] = field(default_factory=dict)
    runs_per_s_pruning: float | None = None
    runs_per_s_quiet: float | None = None
    pruning_vs_quiet: float | None = None
    lag_pruning: LagStats | None = None  # runs finished while a prune ran
    lag_quiet: LagStats | None = None  # runs finished with no history command running
    growth_last_third_vs_first_window: float | None = None  # trades + transactions + sim_runs
    engine_growth_last_third_vs_first_window: float | None = None  # every engine table
    first_full_window_at_s: float | None = None
    reconcile_last_vs_first: float | None = None
    claim_last_vs_first: float | None = None

    @property
    def clean(self) -> bool:
        """Nothing wrong found: every prune and checkpoint exited 0, every reconcile clean,
        `reconcile --full` clean, no slot doubled, every user's run count explained."""
        if not self.available:
            return True
        return (
            all(p.ok for p in self.prunes + self.checkpoint_runs)
            and self.checkpoints.get("failed", 0) == 0
            and not self.checkpoint_errors
            and all(s.reconcile_clean for s in self.samples)
            and self.reconcile_full is not None
            and self.reconcile_full.exit_code == 0
            and self.doubled_slots == 0
            and self.run_counts.get("users_differing") == 0
        )


@dataclass(frozen=True)
class Beside:
    """The engine alone on empty databases interleaved with the history right after the N
    point's window: history, empty, history, empty, history (`--beside` empty windows, each on a
    fresh database of the same users; minutes apart, not the run's length). The same run on an
    empty database, with the machine as it was then. A shared box's speed drifts over the half
    hour between the 0 point and N (the engine's own CPU per run, which history does not change,
    moved by up to 13 % between those windows in runs here), and one window against one decides
    nothing at a few per cent: windows of identical settings spread by up to 10 %."""

    empty: tuple[Window, ...]
    history_again: tuple[Window, ...]  # the history window after each empty one

    def history(self, first: Window) -> list[Window]:
        """The history's windows in order, `first` (the N point's) first."""
        return [first, *self.history_again]

    def in_order(self, first: Window) -> list[tuple[bool, Window]]:
        """Every window as it ran, (on the history?, window): history, empty, history, ..."""
        out = [(True, first)]
        for empty, again in zip(self.empty, self.history_again, strict=True):
            out += [(False, empty), (True, again)]
        return out

    def against(self, first: Window) -> float | None:
        """The history windows' mean runs/s (`first`: the N point's) over the empty
        databases'."""
        if not self.empty:
            return None
        hist = self.history(first)
        return ratio(
            sum(w.runs_per_s for w in hist) / len(hist),
            sum(w.runs_per_s for w in self.empty) / len(self.empty),
        )

    def spread(self, first: Window) -> tuple[float | None, float | None]:
        """The lowest and the highest ratio of one history window over an empty one next to it
        (each pair of neighbours in the order they ran)."""
        ordered = self.in_order(first)
        each = [
            ratio(a.runs_per_s, b.runs_per_s) if on_history else ratio(b.runs_per_s, a.runs_per_s)
            for (on_history, a), (_, b) in pairwise(ordered)
        ]
        known = [r for r in each if r is not None]
        return (min(known), max(known)) if known else (None, None)


@dataclass
class HistoryResult:
    when: str
    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    cluster: dict[str, str]  # the private cluster's settings (the server's, autovacuum on)
    zero: Point
    mid: Point | None  # --mid-runs (None: no middle point)
    full: Point
    fill: Fill
    soak: Soak
    beside: Beside | None = None  # the empty databases beside the N point (None: not measured)
    ratios: dict[str, float | None] = field(default_factory=dict)  # N / 0
    ratios_mid: dict[str, float | None] = field(default_factory=dict)  # N / mid ({}: no mid)
    seconds: float = 0.0

    @property
    def points(self) -> list[Point]:
        return [p for p in (self.zero, self.mid, self.full) if p is not None]

    @property
    def clean(self) -> bool:
        """Every point reconciles (as found, after its checkpoint, and --full) and its
        checkpoint verified, every checkpoint of the fill verified, and the soak found nothing
        wrong."""
        return (
            all(point_clean(p) for p in self.points)
            and not self.fill.checkpoint_errors
            and self.fill.checkpoints.get("failed", 0) == 0
            and self.soak.clean
        )

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["clean"] = self.clean
        out["soak"]["clean"] = self.soak.clean
        return out


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return None if a is None or not b else round(a / b, digits)


def point_clean(p: Point) -> bool:
    return all(
        t is None or t.exit_code == 0
        for t in (p.reconcile, p.checkpoint, p.reconcile_after_checkpoint, p.reconcile_full)
    )


def _seconds(t: Timed | None) -> float | None:
    return None if t is None else t.seconds


def _own(t: Timed | None, key: str) -> float | None:
    """A figure of a command's own --json (a checkpoint's `seconds`, `longest_transaction_s`)."""
    out = t.output if t is not None else None
    v = out.get(key) if isinstance(out, dict) else None
    return float(v) if isinstance(v, int | float) else None


def ratios(base: Point, full: Point) -> dict[str, float | None]:
    """At N against at `base` (the 0 point, or the middle one): the same measure, the same run,
    the same machine."""
    per_m = (
        round(full.history_bytes / full.runs * 1e6 / 2**20, 1) if full.runs else None
    )  # MiB per million runs
    return {
        "runs_per_s": ratio(full.engine.runs_per_s, base.engine.runs_per_s),
        "trades_per_run": ratio(full.engine.trades_per_run, base.engine.trades_per_run),
        "wal_bytes_per_run": ratio(full.engine.wal_bytes_per_run, base.engine.wal_bytes_per_run),
        "db_cpu_ms_per_run": ratio(full.engine.db_cpu_ms_per_run, base.engine.db_cpu_ms_per_run),
        "runs_per_s_with_checkpoints": ratio(
            full.engine_with_checkpoints.runs_per_s if full.engine_with_checkpoints else None,
            base.engine_with_checkpoints.runs_per_s if base.engine_with_checkpoints else None,
        ),
        "claim_median_ms": ratio(full.engine.claim.median_ms, base.engine.claim.median_ms),
        "claim_ms_per_1000_users": ratio(
            full.engine.claim.ms_per_1000_users, base.engine.claim.ms_per_1000_users
        ),
        "reconcile_s": ratio(full.reconcile.seconds, base.reconcile.seconds),
        "reconcile_longest_transaction_s": ratio(
            full.reconcile.longest_transaction_s, base.reconcile.longest_transaction_s
        ),
        "reconcile_after_checkpoint_s": ratio(
            _seconds(full.reconcile_after_checkpoint), _seconds(base.reconcile_after_checkpoint)
        ),
        "reconcile_after_checkpoint_longest_transaction_s": ratio(
            full.reconcile_after_checkpoint.longest_transaction_s
            if full.reconcile_after_checkpoint
            else None,
            base.reconcile_after_checkpoint.longest_transaction_s
            if base.reconcile_after_checkpoint
            else None,
        ),
        "reconcile_full_s": ratio(_seconds(full.reconcile_full), _seconds(base.reconcile_full)),
        "status_above_start_s": ratio(full.status.above_start_s, base.status.above_start_s),
        "pnl_sum_s": ratio(full.pnl_sum_s, base.pnl_sum_s),
        "history_mib_per_million_runs": per_m,
    }


# -- markdown ---------------------------------------------------------------------------------
def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def _n(n: int) -> str:
    return f"{n:,}"


def sized(conf: dict[str, str], name: str, unit: int) -> str:
    """A size setting as people read it: `conf` holds pg_settings' units, or a --pg-set's text."""
    value = conf.get(name, "?")
    return f"{int(value) * unit / 2**30:.2f} GB" if value.isdigit() else value


def _opt(v: float | None, unit: str = "") -> str:
    return "—" if v is None else f"{v}{unit}"


def _timed(t: Timed | None) -> str:
    if t is None:
        return "not available"
    verdict = "clean" if t.exit_code == 0 else f"exit {t.exit_code}"
    since = ""
    full = isinstance(t.output, dict) and t.output.get("full") is True  # from the start, all
    if (rows := rows_since(t)) is not None and not full:
        base = from_checkpoint(t)
        since = f"; {rows:,} rows since {'checkpoint ' + str(base) if base else 'the start'}"
    return f"{t.seconds} s (longest transaction {t.longest_transaction_s} s{since}; {verdict})"


def _checkpoint(t: Timed | None) -> str:
    """The bench's `simctl checkpoint --json` at a point: its own seconds and longest
    transaction (as it measured them), the rows of its window, the wall time with the process."""
    if t is None:
        return "not available"
    verdict = "verified" if t.exit_code == 0 else f"exit {t.exit_code}"
    out = t.output if isinstance(t.output, dict) else {}
    window = out.get("rows")
    rows = (
        sum(v for v in window.values() if isinstance(v, int)) if isinstance(window, dict) else None
    )
    return (
        f"{_opt(_own(t, 'seconds'))} s, longest transaction "
        f"{_opt(_own(t, 'longest_transaction_s'))} s; {'—' if rows is None else f'{rows:,}'} rows "
        f"({t.seconds} s with the process; {verdict})"
    )


def _scheduler(c: CheckpointStats) -> str:
    if not c.count:
        return "none"
    return (
        f"{c.count}: {c.median_s} / {c.max_s} s, {_n(c.median_rows or 0)} / "
        f"{_n(c.max_rows or 0)} rows (longest transaction {c.longest_tx_max_s} s)"
    )


def _window(w: Window) -> str:
    return (
        f"{w.runs_per_s} runs/s ({_opt(w.trades_per_run)} trades a run; CPU ms per run "
        f"{_opt(w.engine_cpu_ms_per_run)} / {_opt(w.db_cpu_ms_per_run)}; "
        f"WAL {_opt(w.wal_bytes_per_run)} B / "
        f"{_opt(w.wal_fpi_per_run)} full pages)"
    )


def _beside(b: Beside, first: Window) -> str:
    windows = [
        f"{'the history' if on_history else 'empty'} {_window(w)}"
        for on_history, w in b.in_order(first)
    ]
    low, high = b.spread(first)
    return (
        f"**The same run on an empty database, beside N** (the engine alone, {first.seconds:g} s "
        f"windows one after another, the history and in turn a fresh empty database of the same "
        f"users holding the history's wallets): {'; '.join(windows)}. "
        f"**{_opt(b.against(first), '×')}** (the history's mean "
        f"over the empty databases'; one window over an empty one next to it: "
        f"{_opt(low, '×')} to {_opt(high, '×')}; CPU: the engine's processes / the database's)."
    )


def _errors(events: list[dict[str, Any]]) -> str:
    if not events:
        return ""
    return (
        f" The scheduler logged {len(events)} checkpoint error(s), the first at "
        f"{events[0].get('timestamp')}: {events[0].get('error')}"
    )


def _row(name: str, cells: list[str], rs: list[float | None]) -> str:
    return f"| {name} | {' | '.join(cells)} | {' | '.join(_opt(r, '×') for r in rs)} |"


def markdown(result: HistoryResult) -> str:
    z, m, f, soak = result.zero, result.mid, result.full, result.soak
    points = result.points
    bases = [result.ratios] + ([result.ratios_mid] if m is not None else [])

    def row(name: str, cell: Callable[[Point], str], key: str | None = None) -> str:
        return _row(name, [cell(p) for p in points], [r.get(key) if key else None for r in bases])

    def size_row(table: str) -> str:
        """A table's size at each point; its ratios computed here (N over each base)."""
        return _row(
            f"`{table}`",
            [_mb(p.table_bytes.get(table, 0)) for p in points],
            [
                ratio(f.table_bytes.get(table), b.table_bytes.get(table))
                for b in ([z] + ([m] if m is not None else []))
            ],
        )

    heads = (
        ["at 0"] + ([f"at {_n(m.runs)} runs"] if m is not None else []) + [f"at {_n(f.runs)} runs"]
    )
    ratio_heads = ["N / 0"] + (["N / mid"] if m is not None else [])
    lines = [
        "",
        f"### History bench, {result.when}",
        "",
        f"`{result.command}`: {result.machine.get('cpus')} CPUs, "
        f"{result.machine.get('platform')}, PostgreSQL {result.machine.get('postgres')}; a "
        f"private cluster with the server's settings and autovacuum on, shared_buffers "
        f"{sized(result.cluster, 'shared_buffers', 8192)}, max_wal_size "
        f"{sized(result.cluster, 'max_wal_size', 2**20)}"
        + "".join(f", {k}={v}" for k, v in (result.settings.get("pg_set") or {}).items())
        + "; "
        f"{result.settings.get('users'):,} users back to back (interval "
        f"{result.settings.get('interval_s')} s), 1 scheduler + {result.settings.get('workers')} "
        f"workers; checkpoints: {result.settings.get('checkpoints')}; "
        f"{result.settings.get('shape') or 'shared: every process on every core'}. "
        f"Ran {result.seconds} s; "
        f"load average before / after: {result.machine.get('load_average_before')} / "
        f"{result.machine.get('load_average_after')} (other jobs on the box count in every "
        "figure).",
        "",
        f"| measure | {' | '.join(heads)} | {' | '.join(ratio_heads)} |",
        "|---|" + "---|" * (len(heads) + len(ratio_heads)),
        row(
            "runs / trades / ledger rows at the point",
            lambda p: f"{_n(p.runs)} / {_n(p.trades)} / {_n(p.ledger_rows)}",
        ),
        row(
            f"engine runs/s, the engine alone ({z.engine.seconds:g} s window, no checkpoint "
            "running)",
            lambda p: f"{p.engine.runs_per_s} (from {_n(p.engine.history_runs_at_start)} runs)",
            "runs_per_s",
        ),
        row(
            "engine runs/s with the scheduler's checkpoints (the fill's window)",
            lambda p: (
                "—"
                if p.engine_with_checkpoints is None
                else f"{p.engine_with_checkpoints.runs_per_s} (from "
                f"{_n(p.engine_with_checkpoints.history_runs_at_start)} runs)"
            ),
            "runs_per_s_with_checkpoints",
        ),
        row(
            "trades per run in the engine-alone window (a run's work: its wallet decides it)",
            lambda p: _opt(p.engine.trades_per_run),
            "trades_per_run",
        ),
        row(
            "WAL per run in the engine-alone window: bytes / full page images",
            lambda p: f"{_opt(p.engine.wal_bytes_per_run)} / {_opt(p.engine.wal_fpi_per_run)}",
            "wal_bytes_per_run",
        ),
        row(
            "CPU ms per run in that window: the engine's processes / the database's",
            lambda p: (
                f"{_opt(p.engine.engine_cpu_ms_per_run)} / {_opt(p.engine.db_cpu_ms_per_run)}"
            ),
            "db_cpu_ms_per_run",
        ),
        row(
            "the server's checkpoints in that window: on timeout / requested (max_wal_size); "
            "autovacuums + autoanalyzes",
            lambda p: (
                f"{_opt(p.engine.checkpoints_timed)} / {_opt(p.engine.checkpoints_requested)}; "
                f"{_opt(p.engine.autovacuums)}"
            ),
        ),
        row(
            "claim ms per pass, median / p95",
            lambda p: f"{_opt(p.engine.claim.median_ms)} / {_opt(p.engine.claim.p95_ms)}",
            "claim_median_ms",
        ),
        row(
            "claim ms per 1,000 users claimed",
            lambda p: _opt(p.engine.claim.ms_per_1000_users),
            "claim_ms_per_1000_users",
        ),
        row(
            "the scheduler's checkpoints in the fill before: n: median / max s, median / max rows",
            lambda p: _scheduler(p.scheduler_checkpoints),
        ),
        row(
            "`simctl reconcile` as the engine left it", lambda p: _timed(p.reconcile), "reconcile_s"
        ),
        row("`simctl checkpoint` then (by the bench)", lambda p: _checkpoint(p.checkpoint)),
        row(
            "`simctl reconcile` right after it",
            lambda p: _timed(p.reconcile_after_checkpoint),
            "reconcile_after_checkpoint_s",
        ),
        row("`simctl reconcile --full`", lambda p: _timed(p.reconcile_full), "reconcile_full_s"),
        row(
            "`simctl status` above process start",
            lambda p: (
                f"{p.status.above_start_s} s ({p.status.status_s} − {p.status.process_start_s})"
            ),
            "status_above_start_s",
        ),
        row("`SELECT sum(total_pnl_usd) FROM sim_pnl`", lambda p: f"{p.pnl_sum_s} s", "pnl_sum_s"),
    ]
    lines += [size_row(name) for name in f.table_bytes]
    lines += [
        row("trades + transactions + sim_runs", lambda p: _mb(p.history_bytes)),
        row(
            "dead / live tuples on `users` (autovacuums so far)",
            lambda p: (
                f"{_n(p.users_dead.get('dead', 0))} / {_n(p.users_dead.get('live', 0))} "
                f"({p.users_dead.get('autovacuums', 0)})"
            ),
        ),
        "",
        f"Fill: {_n(result.fill.runs_written)} runs in {result.fill.seconds} s "
        f"({result.fill.runs_per_s} runs/s); "
        f"{_opt(result.ratios.get('history_mib_per_million_runs'))} MB of trades + transactions + "
        f"sim_runs per million runs; checkpoints during the fill: "
        f"{result.fill.checkpoints or 'none'}.{_errors(result.fill.checkpoint_errors)}",
        "",
    ]
    if result.beside is not None:
        lines += [_beside(result.beside, f.engine), ""]
    for label, t in (("reconcile", f.reconcile), ("reconcile --full", f.reconcile_full)):
        if t is not None and t.longest_statement:
            stmt = t.longest_statement.replace("`", "'")
            lines.append(
                f"At {_n(f.runs)} runs, `{label}`'s longest transaction was last seen running: "
                f"`{stmt}`"
            )
    lines.append("")
    lines += soak_markdown(soak)
    verdict = "clean" if result.clean else "NOT CLEAN (see the JSON)"
    lines += ["", f"Ledger and history checks: {verdict}.", ""]
    return "\n".join(lines)


def _removed(output: Any) -> int:
    """Rows a prune's --json says it removed (its "rows": {table: n})."""
    rows = output.get("rows") if isinstance(output, dict) else None
    return sum(v for v in rows.values() if isinstance(v, int)) if isinstance(rows, dict) else 0


def _lag(lag: LagStats | None) -> str:
    if lag is None or not lag.runs:
        return "— (no runs)"
    return f"{lag.median_s} / {lag.p95_s} / {lag.max_s} s ({_n(lag.runs)} runs)"


def soak_markdown(soak: Soak) -> list[str]:
    if not soak.available:
        return [f"Soak with retention: not available ({soak.reason})."]
    lines = [
        f"Soak with retention: {soak.minutes:g} min on a fresh database of the same users, "
        + (
            "back to back (the engine flat out), "
            if soak.rate_per_s is None
            else f"each on a slot every {soak.interval_s:,} s, spread ({soak.rate_per_s:,} "
            "runs/s), "
        )
        + f"checkpoints every {soak.checkpoint_s:g} s ({soak.checkpoints_by}), "
        f"`simctl prune --keep-days 0` every {soak.prune_s:g} s.",
        "",
        "| at | runs | runs/s | trades + transactions + sim_runs | all engine tables | "
        "reconcile s (longest transaction) | claim ms median / p95 | dead tuples on users |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in soak.samples:
        lines.append(
            f"| {s.at_s:g} s | {_n(s.runs)} | {s.runs_per_s} | {_mb(s.history_bytes)} | "
            f"{_mb(s.engine_bytes)} | {s.reconcile_s} ({s.reconcile_longest_transaction_s})"
            f"{'' if s.reconcile_clean else ' NOT CLEAN'} | {_opt(s.claim.median_ms)} / "
            f"{_opt(s.claim.p95_ms)} | {_n(s.users_dead)} |"
        )
    done = [p for p in soak.prunes if p.exit_code == 0]
    busy = sum(1 for p in soak.prunes if p.busy)
    failed = [p for p in soak.prunes if not p.ok]
    removed = sum(_removed(p.output) for p in done)
    full = soak.reconcile_full
    lines += [
        "",
        f"- prunes: {len(done)} done ({_n(removed)} rows removed; seconds "
        f"{', '.join(str(p.seconds) for p in done) or 'none'}; longest transaction "
        f"{max((p.longest_transaction_s for p in done), default=0.0)} s), {busy} refused "
        f"because a checkpoint held the history lease, {len(failed)} failed"
        f"{': ' + failed[0].stderr if failed else ''}; checkpoints: "
        f"{soak.checkpoints or 'none'}.{_errors(soak.checkpoint_errors)}",
        f"- history tables, last third of the soak vs the first full window: "
        f"{_opt(soak.growth_last_third_vs_first_window, '×')} (every engine table: "
        f"{_opt(soak.engine_growth_last_third_vs_first_window, '×')}; the first full window: "
        f"the sample at {_opt(soak.first_full_window_at_s)} s); reconcile last vs first sample: "
        f"{_opt(soak.reconcile_last_vs_first, '×')}; claim median last vs first: "
        f"{_opt(soak.claim_last_vs_first, '×')}",
        f"- runs/s while a prune ran: {_opt(soak.runs_per_s_pruning)}; with no history command "
        f"running: {_opt(soak.runs_per_s_quiet)}; ratio {_opt(soak.pruning_vs_quiet, '×')}",
        f"- how late runs started after their slots, median / p95 / max: while a prune ran "
        f"{_lag(soak.lag_pruning)}; with no history command running {_lag(soak.lag_quiet)}",
        f"- at the end: `reconcile --full` {_timed(full)}; slots run twice: "
        f"{_opt(soak.doubled_slots)}; users whose sim_run_count the history does not explain: "
        f"{soak.run_counts.get('users_differing', '—')} ({_n(soak.run_counts.get('counted', 0))} "
        f"runs counted, {_n(soak.run_counts.get('explained', 0))} explained)",
    ]
    return lines
