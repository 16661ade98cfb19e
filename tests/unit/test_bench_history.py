"""The history bench's pure parts: claim times read from a scheduler's JSON log, command output
kept as figures, and the soak's summary against its first full window."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from simtools.bench.history import summarise_soak
from simtools.bench.history_probe import ClaimStats, claim_stats, compact, scheduler_events
from simtools.bench.history_results import CommandRun, Soak, SoakSample


def _line(at: datetime, **fields: object) -> str:
    return json.dumps({**fields, "timestamp": at.isoformat().replace("+00:00", "Z")})


def test_claim_stats_read_the_passes_of_a_span_only(tmp_path: Path) -> None:
    log = tmp_path / "scheduler.log"
    t = [datetime(2026, 12, 6, 7, 0, s, tzinfo=UTC) for s in range(6)]
    log.write_text(
        "\n".join(
            [
                _line(t[0], event="scheduler.pass", claimed=400, claim_ms=90.0),  # before
                _line(t[1], event="scheduler.pass", claimed=400, claim_ms=10.0),
                "not json at all",
                _line(t[2], event="checkpoint.verified", seconds=1.0),
                _line(t[3], event="scheduler.pass", claimed=800, claim_ms=30.0),
                _line(t[4], event="scheduler.pass", claimed=800, claim_ms=20.0),
                _line(t[5], event="scheduler.pass", claimed=400, claim_ms=99.0),  # after
            ]
        )
    )
    stats = claim_stats(log, t[1].timestamp(), t[5].timestamp())
    assert stats == ClaimStats(passes=3, median_ms=20.0, p95_ms=30.0, ms_per_1000_users=30.0)
    assert claim_stats(tmp_path / "missing.log", 0, 1).passes == 0


def test_checkpoint_errors_are_found_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "scheduler.log"
    at = datetime(2026, 12, 6, 7, 0, tzinfo=UTC)
    log.write_text(
        "\n".join(
            [
                _line(at, event="checkpoint.verified", checkpoint=1),
                _line(at, event="checkpoint.not_taken", error="duplicate key"),
                _line(at, event="checkpoint.failed", problems=["user 7: balance"]),
            ]
        )
    )
    found = scheduler_events(log, ("checkpoint.not_taken", "checkpoint.failed"))
    assert [(e["event"], e["error"]) for e in found] == [
        ("checkpoint.not_taken", "duplicate key"),
        ("checkpoint.failed", "['user 7: balance']"),
    ]


def test_command_output_keeps_figures_and_counts_lists() -> None:
    output = {"clean": False, "discrepancies": [{"user_id": 1}] * 3, "rows_since": {"trades": 5}}
    assert compact(output) == {"clean": False, "discrepancies": 3, "rows_since": {"trades": 5}}


def _sample(at_s: float, history: int, reconcile_s: float, claim_ms: float) -> SoakSample:
    return SoakSample(
        at_s=at_s,
        runs=0,
        runs_per_s=1.0,
        history_bytes=history,
        engine_bytes=history,
        table_bytes={},
        reconcile_s=reconcile_s,
        reconcile_longest_transaction_s=0.1,
        reconcile_clean=True,
        claim=ClaimStats(1, claim_ms, claim_ms, 1.0),
        users_dead=0,
    )


def test_soak_summary_is_against_the_first_sample_after_the_first_prune() -> None:
    soak = Soak(available=True, reason="")
    # Growing until the first prune (done at 25 s), then flat at about 100.
    sizes = [(10, 40), (20, 80), (30, 100), (40, 104), (50, 101), (60, 103), (70, 102), (80, 105)]
    soak.samples = [_sample(at, size, 1.0 + at / 100, 10.0) for at, size in sizes]
    soak.prunes = [
        CommandRun("simctl prune", at_s=20.0, seconds=5.0, exit_code=0),
        CommandRun("simctl prune", at_s=5.0, seconds=1.0, exit_code=1),  # failed: not a window
    ]
    summarise_soak(soak)
    # The first full window: the sample at 30 s (the failed prune at 5 s does not count).
    assert soak.growth_last_third_vs_first_window == 1.05  # max(103, 102, 105) / 100
    assert soak.reconcile_last_vs_first == round(1.8 / 1.3, 3)
    assert soak.claim_last_vs_first == 1.0


def test_soak_without_a_prune_that_worked_has_no_summary() -> None:
    soak = Soak(available=True, reason="")
    soak.samples = [_sample(10, 40, 1.0, 5.0), _sample(20, 80, 1.0, 5.0)]
    soak.prunes = [CommandRun("simctl prune", at_s=5.0, seconds=1.0, exit_code=1)]
    summarise_soak(soak)
    assert soak.growth_last_third_vs_first_window is None
