"""The history bench's typed results (`as_json` is the --json file's content, what
tests/acceptance/test_bench_history.py reads) and its markdown table. Every ratio is against the
0-history point measured in the same run; no figure is judged against a threshold here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from simtools.bench.history_probe import ClaimStats, StatusTime, Timed


@dataclass(frozen=True)
class Window:
    """The engine over a fixed interval (the same users and processes at every point): runs
    committed in it, and the scheduler's claims logged in it."""

    history_runs_at_start: int
    seconds: float
    runs: int
    runs_per_s: float
    claim: ClaimStats


@dataclass(frozen=True)
class Point:
    """One history size: what was written, the engine's window, and the operators' commands
    timed with the engine stopped."""

    label: str
    runs: int
    trades: int
    ledger_rows: int
    engine: Window
    reconcile: Timed
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


@dataclass
class Soak:
    available: bool
    reason: str  # why not, when not available
    minutes: float = 0.0
    checkpoint_s: float = 0.0
    prune_s: float = 0.0
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
    growth_last_third_vs_first_window: float | None = None
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


@dataclass
class HistoryResult:
    when: str
    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    cluster: dict[str, str]  # the private cluster's settings (the server's, autovacuum on)
    zero: Point
    full: Point
    fill: Fill
    soak: Soak
    ratios: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        """Both points reconcile, every checkpoint of the fill verified, and the soak found
        nothing wrong."""
        return (
            self.zero.reconcile.exit_code == 0
            and not self.fill.checkpoint_errors
            and self.fill.checkpoints.get("failed", 0) == 0
            and self.full.reconcile.exit_code == 0
            and (self.full.reconcile_full is None or self.full.reconcile_full.exit_code == 0)
            and self.soak.clean
        )

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["clean"] = self.clean
        out["soak"]["clean"] = self.soak.clean
        return out


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return None if a is None or not b else round(a / b, digits)


def ratios(zero: Point, full: Point) -> dict[str, float | None]:
    """At N against at 0: the same measure, the same run, the same machine."""
    per_m = (
        round(full.history_bytes / full.runs * 1e6 / 2**20, 1) if full.runs else None
    )  # MiB per million runs
    return {
        "runs_per_s": ratio(full.engine.runs_per_s, zero.engine.runs_per_s),
        "claim_median_ms": ratio(full.engine.claim.median_ms, zero.engine.claim.median_ms),
        "claim_ms_per_1000_users": ratio(
            full.engine.claim.ms_per_1000_users, zero.engine.claim.ms_per_1000_users
        ),
        "reconcile_s": ratio(full.reconcile.seconds, zero.reconcile.seconds),
        "reconcile_longest_transaction_s": ratio(
            full.reconcile.longest_transaction_s, zero.reconcile.longest_transaction_s
        ),
        "status_above_start_s": ratio(full.status.above_start_s, zero.status.above_start_s),
        "pnl_sum_s": ratio(full.pnl_sum_s, zero.pnl_sum_s),
        "history_mib_per_million_runs": per_m,
    }


# -- markdown ---------------------------------------------------------------------------------
def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def _n(n: int) -> str:
    return f"{n:,}"


def _opt(v: float | None, unit: str = "") -> str:
    return "—" if v is None else f"{v}{unit}"


def _timed(t: Timed | None) -> str:
    if t is None:
        return "not available"
    verdict = "clean" if t.exit_code == 0 else f"exit {t.exit_code}"
    since = ""
    if isinstance(t.output, dict) and isinstance(t.output.get("rows_since"), dict):
        rows = sum(v for v in t.output["rows_since"].values() if isinstance(v, int))
        base = t.output.get("from_checkpoint")
        since = f"; {rows:,} rows since {'checkpoint ' + str(base) if base else 'the start'}"
    return f"{t.seconds} s (longest transaction {t.longest_transaction_s} s{since}; {verdict})"


def _errors(events: list[dict[str, Any]]) -> str:
    if not events:
        return ""
    return (
        f" The scheduler logged {len(events)} checkpoint error(s), the first at "
        f"{events[0].get('timestamp')}: {events[0].get('error')}"
    )


def _row(name: str, zero: str, full: str, r: float | None) -> str:
    return f"| {name} | {zero} | {full} | {_opt(r, '×')} |"


def markdown(result: HistoryResult) -> str:
    z, f, soak = result.zero, result.full, result.soak
    r = result.ratios
    lines = [
        "",
        f"### History bench, {result.when}",
        "",
        f"`{result.command}`: {result.machine.get('cpus')} CPUs, "
        f"{result.machine.get('platform')}, PostgreSQL {result.machine.get('postgres')}; a "
        f"private cluster with the server's settings and autovacuum on; "
        f"{result.settings.get('users'):,} users back to back (interval "
        f"{result.settings.get('interval_s')} s), 1 scheduler + {result.settings.get('workers')} "
        f"workers; checkpoints: {result.settings.get('checkpoints')}. Ran {result.seconds} s; "
        f"load average before / after: {result.machine.get('load_average_before')} / "
        f"{result.machine.get('load_average_after')} (other jobs on the box count in every "
        "figure).",
        "",
        f"| measure | at 0 | at {_n(f.runs)} runs | N / 0 |",
        "|---|---|---|---|",
        _row(
            "runs / trades / ledger rows at the point",
            f"{_n(z.runs)} / {_n(z.trades)} / {_n(z.ledger_rows)}",
            f"{_n(f.runs)} / {_n(f.trades)} / {_n(f.ledger_rows)}",
            None,
        ),
        _row(
            f"engine runs/s ({z.engine.seconds:g} s window)",
            f"{z.engine.runs_per_s} (from {_n(z.engine.history_runs_at_start)} runs)",
            f"{f.engine.runs_per_s} (from {_n(f.engine.history_runs_at_start)} runs)",
            r.get("runs_per_s"),
        ),
        _row(
            "claim ms per pass, median / p95",
            f"{_opt(z.engine.claim.median_ms)} / {_opt(z.engine.claim.p95_ms)}",
            f"{_opt(f.engine.claim.median_ms)} / {_opt(f.engine.claim.p95_ms)}",
            r.get("claim_median_ms"),
        ),
        _row(
            "claim ms per 1,000 users claimed",
            _opt(z.engine.claim.ms_per_1000_users),
            _opt(f.engine.claim.ms_per_1000_users),
            r.get("claim_ms_per_1000_users"),
        ),
        _row("`simctl reconcile`", _timed(z.reconcile), _timed(f.reconcile), r.get("reconcile_s")),
        _row(
            "`simctl reconcile --full`",
            _timed(z.reconcile_full),
            _timed(f.reconcile_full),
            ratio(
                f.reconcile_full.seconds if f.reconcile_full else None,
                z.reconcile_full.seconds if z.reconcile_full else None,
            ),
        ),
        _row(
            "`simctl status` above process start",
            f"{z.status.above_start_s} s ({z.status.status_s} − {z.status.process_start_s})",
            f"{f.status.above_start_s} s ({f.status.status_s} − {f.status.process_start_s})",
            r.get("status_above_start_s"),
        ),
        _row(
            "`SELECT sum(total_pnl_usd) FROM sim_pnl`",
            f"{z.pnl_sum_s} s",
            f"{f.pnl_sum_s} s",
            r.get("pnl_sum_s"),
        ),
    ]
    for name in f.table_bytes:
        lines.append(
            _row(
                f"`{name}`",
                _mb(z.table_bytes.get(name, 0)),
                _mb(f.table_bytes[name]),
                ratio(f.table_bytes[name], z.table_bytes.get(name)),
            )
        )
    lines += [
        _row("trades + transactions + sim_runs", _mb(z.history_bytes), _mb(f.history_bytes), None),
        _row(
            "dead / live tuples on `users` (autovacuums so far)",
            f"{_n(z.users_dead.get('dead', 0))} / {_n(z.users_dead.get('live', 0))} "
            f"({z.users_dead.get('autovacuums', 0)})",
            f"{_n(f.users_dead.get('dead', 0))} / {_n(f.users_dead.get('live', 0))} "
            f"({f.users_dead.get('autovacuums', 0)})",
            None,
        ),
        "",
        f"Fill: {_n(result.fill.runs_written)} runs in {result.fill.seconds} s "
        f"({result.fill.runs_per_s} runs/s); "
        f"{_opt(r.get('history_mib_per_million_runs'))} MB of trades + transactions + "
        f"sim_runs per million runs; checkpoints during the fill: "
        f"{result.fill.checkpoints or 'none'}.{_errors(result.fill.checkpoint_errors)}",
        "",
    ]
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


def soak_markdown(soak: Soak) -> list[str]:
    if not soak.available:
        return [f"Soak with retention: not available ({soak.reason})."]
    lines = [
        f"Soak with retention: {soak.minutes:g} min on a fresh database of the same users, "
        f"checkpoints every {soak.checkpoint_s:g} s ({soak.checkpoints_by}), "
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
        f"{_opt(soak.growth_last_third_vs_first_window, '×')}; reconcile last vs first sample: "
        f"{_opt(soak.reconcile_last_vs_first, '×')}; claim median last vs first: "
        f"{_opt(soak.claim_last_vs_first, '×')}",
        f"- runs/s while a prune ran: {_opt(soak.runs_per_s_pruning)}; with no history command "
        f"running: {_opt(soak.runs_per_s_quiet)}; ratio {_opt(soak.pruning_vs_quiet, '×')}",
        f"- at the end: `reconcile --full` {_timed(full)}; slots run twice: "
        f"{_opt(soak.doubled_slots)}; users whose sim_run_count the history does not explain: "
        f"{soak.run_counts.get('users_differing', '—')} ({_n(soak.run_counts.get('counted', 0))} "
        f"runs counted, {_n(soak.run_counts.get('explained', 0))} explained)",
    ]
    return lines
