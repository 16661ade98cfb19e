"""Typed results: one dataclass per phase, one per shape, one per run. `as_json` is the --json
file's content (and what tests/acceptance/test_bench.py reads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CeilingRun:
    """ceiling.pgb at one client count: valid only if every statement still found 200 due users."""

    clients: int
    tps: float
    runs_per_s: float
    runs_written: int
    valid: bool
    postgres_cpu_us_per_run: float | None


@dataclass(frozen=True)
class Ceiling:
    by_clients: dict[str, CeilingRun]
    best_runs_per_s: float | None
    # Of the best valid client count: the reference every CPU ratio divides by.
    postgres_cpu_us_per_run: float | None


@dataclass(frozen=True)
class Tpcb:
    tps_by_clients: dict[str, float]
    best_tps: float


@dataclass(frozen=True)
class Naive:
    users: int
    runs_per_s: float


@dataclass(frozen=True)
class Peak:
    """One engine peak: every user due at one slot, timed from the slot to the last run."""

    seconds: float
    runs_per_s: float
    trades_per_s: float
    # CPU per run by side: workers, scheduler, redis, postgres (None: not on this machine).
    cpu_us_per_run: dict[str, float | None]


@dataclass(frozen=True)
class Sustained:
    offered_runs_per_s: float
    interval_s: int
    runs: int
    lag_p50_s: float | None
    lag_p99_s: float | None
    lag_max_s: float | None


@dataclass(frozen=True)
class Reconcile:
    clean: bool
    discrepancies: int


@dataclass(frozen=True)
class Engine:
    users: int
    workers: int
    seconds: float
    runs_per_s: float
    trades_per_s: float
    peaks_runs_per_s: list[float]
    cpu_us_per_run: dict[str, float | None]
    sustained: Sustained
    worker_rss_kb: dict[str, list[int]]
    reconcile: Reconcile


@dataclass(frozen=True)
class Claims:
    ms_per_claim_by_users: dict[str, float]


@dataclass(frozen=True)
class Rss:
    """One worker's resident memory after its first 10,000 runs and after `runs`."""

    runs: int
    after_10k_kb: int
    after_all_kb: int
    ratio: float


@dataclass(frozen=True)
class Cpu:
    """Where a run's CPU goes in this shape, against the ceiling's Postgres CPU per run."""

    ceiling_postgres_us_per_run: float | None
    engine_postgres_us_per_run: float | None
    python_us_per_run: float | None  # workers + scheduler + redis
    engine_postgres_vs_ceiling: float | None
    python_vs_ceiling_postgres: float | None


@dataclass(frozen=True)
class Ratios:
    engine_vs_ceiling: float | None
    engine_vs_tpcb: float
    engine_vs_naive: float
    claim_largest_vs_10k: float | None = None  # the shared shape only


@dataclass(frozen=True)
class Cluster:
    """The pinned shape's private cluster: its cores and the settings copied from the server."""

    postgres_cpus: list[int]
    client_cpus: list[int]
    server_version: str
    settings: dict[str, str]
    settings_differing: dict[str, str]  # name -> "server's / private cluster's", if any


@dataclass(frozen=True)
class ShapeResult:
    shape: str  # "shared" or "pinned"
    ceiling: Ceiling
    tpcb: Tpcb
    naive: Naive
    engine: Engine
    cpu: Cpu
    ratios: Ratios
    claim: Claims | None = None  # the shared shape only
    rss: Rss | None = None  # the shared shape only
    cluster: Cluster | None = None  # the pinned shape only


@dataclass(frozen=True)
class Floor:
    """One floor the engine must meet: its target, what this run measured, met or not (None:
    the run did not measure it)."""

    shape: str
    name: str
    target: str
    measured: float | None
    detail: str
    met: bool | None


@dataclass
class BenchResult:
    when: str
    quick: bool
    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    shared: ShapeResult
    pinned: ShapeResult | None
    floors: list[Floor] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        """Every measured engine's ledger reconciles."""
        shapes = [self.shared] + ([self.pinned] if self.pinned else [])
        return all(s.engine.reconcile.clean for s in shapes)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)
