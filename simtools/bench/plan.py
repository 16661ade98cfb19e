"""What a bench run measures and at which sizes, and the ceiling script it measures against."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

# The ceiling script ships with the package (simtools/bench/ceiling.pgb, a byte-identical copy of the
# shared shared/bench/ceiling.pgb, which a test keeps in step), so a clone or an installed wheel
# runs the bench from anywhere; the variable points at another script.
CEILING_ENV = "SIMENGINE_BENCH_CEILING"


def ceiling_file() -> Path:
    """$SIMENGINE_BENCH_CEILING if set, else the packaged ceiling.pgb beside this file."""
    override = os.environ.get(CEILING_ENV)
    if override:
        return Path(override).resolve()
    return Path(str(files("simtools.bench") / "ceiling.pgb"))


@dataclass(frozen=True)
class BenchPlan:
    """Sizes of each phase; --quick shrinks them to a smoke run of a few minutes."""

    ceiling_users: int
    tpcb_scale: int
    tpcb_seconds: int
    naive_users: int
    engine_users: int
    sustained_s: int
    claim_sizes: tuple[int, ...]
    rss_runs: int
    peaks: int = 3  # engine peaks; the best is reported, as the ceiling reports its best
    workers: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))
    ceiling_clients: tuple[int, ...] = (1, 2, 4)
    tpcb_clients: tuple[int, ...] = (1, 4, 16)

    @classmethod
    def make(cls, quick: bool) -> BenchPlan:
        if quick:
            return cls(40_000, 1, 2, 2_000, 20_000, 8, (10_000, 50_000), 20_000, peaks=1)
        return cls(400_000, 10, 10, 10_000, 100_000, 60, (10_000, 100_000, 1_000_000), 1_000_000)
