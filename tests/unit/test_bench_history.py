"""The history bench's pure parts: claim times and the scheduler's own checkpoints read from its
JSON log, command output kept as figures, the middle point's default, the table's columns, and
the soak's summary against its first full window."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from simconfig import Settings
from simctl.bench import _CHECKPOINT_ROWS
from simtools.bench import history
from simtools.bench.history import (
    CHECKPOINT_ROWS,
    NO_CHECKPOINTS,
    Shape,
    bind_process,
    mid_runs_for,
    primary_sizing,
    summarise_soak,
)
from simtools.bench.history_probe import (
    CheckpointStats,
    ClaimStats,
    StatusTime,
    Timed,
    checkpoint_stats,
    claim_stats,
    compact,
    scheduler_events,
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
    markdown,
    ratios,
)
from simtools.bench.procs import BenchError


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


def test_on_slots_the_first_full_window_waits_for_every_user_to_have_run() -> None:
    # Every user every 30 s, checkpoints and prunes every 10 s: the window holds each user's
    # latest run, so it is full at 50 s, not at the first prune (done at 15 s).
    soak = Soak(available=True, reason="", interval_s=30, checkpoint_s=10.0, prune_s=10.0)
    sizes = [(10, 40), (20, 60), (30, 70), (40, 90), (50, 100), (60, 101), (70, 99), (80, 104)]
    soak.samples = [_sample(at, size, 1.0, 10.0) for at, size in sizes]
    soak.prunes = [CommandRun("simctl prune", at_s=10.0, seconds=5.0, exit_code=0)]
    summarise_soak(soak)
    assert soak.first_full_window_at_s == 50
    assert soak.growth_last_third_vs_first_window == 1.04  # max(99, 104) / 100
    assert soak.engine_growth_last_third_vs_first_window == 1.04


def test_soak_without_a_prune_that_worked_has_no_summary() -> None:
    soak = Soak(available=True, reason="")
    soak.samples = [_sample(10, 40, 1.0, 5.0), _sample(20, 80, 1.0, 5.0)]
    soak.prunes = [CommandRun("simctl prune", at_s=5.0, seconds=1.0, exit_code=1)]
    summarise_soak(soak)
    assert soak.growth_last_third_vs_first_window is None


def test_the_schedulers_checkpoints_of_a_span_are_counted_with_their_rows(tmp_path: Path) -> None:
    log = tmp_path / "scheduler.log"
    t = [datetime(2026, 12, 6, 7, 0, s, tzinfo=UTC) for s in range(6)]
    rows = {"trades": 400, "transactions": 400, "sim_runs": 200}
    log.write_text(
        "\n".join(
            [
                _line(t[0], event="checkpoint.verified", rows=rows, seconds=9.0, longest_tx_s=9.0),
                _line(t[1], event="checkpoint.verified", rows=rows, seconds=1.0, longest_tx_s=0.5),
                _line(t[2], event="scheduler.pass", claimed=400, claim_ms=10.0),
                _line(t[2], event="checkpoint.failed", problems=["user 7"]),
                _line(
                    t[3],
                    event="checkpoint.verified",
                    rows={"trades": 3000, "transactions": 3000, "sim_runs": 1000},
                    seconds=4.0,
                    longest_tx_s=1.5,
                ),
                _line(t[4], event="checkpoint.verified", rows=rows, seconds=2.0, longest_tx_s=0.7),
                _line(t[5], event="checkpoint.verified", rows=rows, seconds=8.0, longest_tx_s=8.0),
            ]
        )
    )
    stats = checkpoint_stats(log, t[1].timestamp(), t[5].timestamp())
    assert stats == CheckpointStats(
        count=3, median_s=2.0, max_s=4.0, median_rows=1000, max_rows=7000, longest_tx_max_s=1.5
    )
    assert checkpoint_stats(log, 0, 1) == NO_CHECKPOINTS
    assert checkpoint_stats(tmp_path / "missing.log", 0, 2e9).count == 0


def test_the_middle_point_is_1m_when_n_is_more_unless_given() -> None:
    assert mid_runs_for(10_000_000, None) == 1_000_000
    assert mid_runs_for(1_000_000, None) is None
    assert mid_runs_for(8_000, None) is None
    assert mid_runs_for(8_000, 4_000) == 4_000
    assert mid_runs_for(10_000_000, 0) is None
    # The bench's checkpoint settings default to the scheduler's own.
    default = Settings.model_fields["sim_checkpoint_rows"].default
    assert CHECKPOINT_ROWS == _CHECKPOINT_ROWS == default


def _timed(seconds: float, output: object = None) -> Timed:
    return Timed(seconds, 0, seconds / 2, 1, output=output)


def _point(label: str, runs: int, found: float, after: float) -> Point:
    claim = ClaimStats(10, 5.0, 9.0, 1.0)
    found_t = _timed(found, {"from_checkpoint": 3, "rows_since": {"trades": 600, "sim_runs": 200}})
    return Point(
        label=label,
        runs=runs,
        trades=runs,
        ledger_rows=runs,
        engine=Window(
            runs,
            30.0,
            3000,
            100.0,
            claim,
            2000.0,
            0.01,
            0,
            0,
            0.06,
            0.08 + runs / 100_000,
            2,
            # Fresh users, who hold USD alone, make fewer trades a run than seasoned ones.
            1.0 + min(runs, 10_000) / 20_000,
        ),
        engine_with_checkpoints=None if label == "0" else Window(runs, 30.0, 2400, 80.0, claim),
        reconcile=found_t,
        reconcile_rows_since=800,
        reconcile_from_checkpoint=3,
        checkpoint=_timed(
            2.5, {"seconds": 2.0, "longest_transaction_s": 0.4, "rows": {"trades": 600}}
        ),
        reconcile_after_checkpoint=_timed(after, {"from_checkpoint": 4, "rows_since": {}}),
        reconcile_after_rows_since=0,
        scheduler_checkpoints=CheckpointStats(2, 1.0, 1.5, 500, 900, 0.3),
        reconcile_full=_timed(found * 3),
        status=StatusTime(0.6, 0.5, 0.1, 0),
        pnl_sum_s=0.2,
        table_bytes={"trades": runs * 100 + 1},
        history_bytes=runs * 100 + 1,
        users_dead={"dead": 1, "live": 2, "autovacuums": 0},
    )


def test_the_table_has_a_column_per_point_and_the_ratios_to_0_and_to_the_middle() -> None:
    zero, mid, full = (
        _point("0", 0, 1.0, 0.5),
        _point("mid", 1000, 4.0, 1.0),
        _point("N", 10_000, 2.0, 1.1),
    )
    result = HistoryResult(
        when="now",
        command="simctl bench --history",
        machine={"cpus": 2},
        settings={"users": 100, "interval_s": 1, "workers": 2, "checkpoints": "x"},
        cluster={},
        zero=zero,
        mid=mid,
        full=full,
        fill=Fill(10_000, 10_000, 10.0, 1000.0, {"verified": 3}),
        soak=Soak(available=False, reason="--soak-min 0"),
    )
    result.ratios, result.ratios_mid = ratios(zero, full), ratios(mid, full)
    assert result.ratios_mid["reconcile_after_checkpoint_s"] == 1.1
    assert result.ratios["reconcile_s"] == 2.0 and result.ratios_mid["reconcile_s"] == 0.5
    table = markdown(result)
    assert "| measure | at 0 | at 1,000 runs | at 10,000 runs | N / 0 | N / mid |" in table
    rows = [line for line in table.splitlines() if line.startswith("| `simctl reconcile` right")]
    assert rows == [
        "| `simctl reconcile` right after it | 0.5 s (longest transaction 0.25 s; 0 rows since "
        "checkpoint 4; clean) | 1.0 s (longest transaction 0.5 s; 0 rows since checkpoint 4; "
        "clean) | 1.1 s (longest transaction 0.55 s; 0 rows since checkpoint 4; clean) | 2.2× | "
        "1.1× |"
    ]
    assert "800 rows since checkpoint 3" in table
    assert "2.0 s, longest transaction 0.4 s; 600 rows (2.5 s with the process; verified)" in table
    assert "2: 1.0 / 1.5 s, 500 / 900 rows (longest transaction 0.3 s)" in table
    # The engine alone at every point; with the scheduler's checkpoints after a fill only.
    alone = [line for line in table.splitlines() if line.startswith("| engine runs/s, the engine")]
    assert alone and alone[0].endswith("| 1.0× | 1.0× |")
    # What a run costs in CPU, each side, and whether the server's checkpoints came on time.
    assert (
        "| CPU ms per run in that window: the engine's processes / the database's | 0.06 / 0.08 "
        "| 0.06 / 0.09 | 0.06 / 0.18 | 2.25× | 2.0× |" in table
    )
    assert (
        "| trades per run in the engine-alone window (a run's work: its wallet decides it) | 1.0 "
        "| 1.05 | 1.5 | 1.5× | 1.429× |" in table
    )
    assert (
        "| the server's checkpoints in that window: on timeout / requested (max_wal_size); "
        "autovacuums + autoanalyzes | 0 / 0; 2 | 0 / 0; 2 | 0 / 0; 2 | — | — |" in table
    )
    with_cp = [line for line in table.splitlines() if "with the scheduler's checkpoints" in line]
    assert with_cp == [
        "| engine runs/s with the scheduler's checkpoints (the fill's window) | — | 80.0 (from "
        "1,000 runs) | 80.0 (from 10,000 runs) | — | 1.0× |"
    ]
    assert all(line.count("|") == 7 for line in table.splitlines() if line.startswith("| "))
    # The same run on an empty database beside N: the history's two windows against it.
    assert "beside N" not in table
    claim = ClaimStats(10, 5.0, 9.0, 1.0)
    result.beside = Beside(
        (
            Window(5000, 30.0, 4000, 125.0, claim, 1800.0, 0.0, 0, 0, 0.06, 0.08, 1, 1.48),
            Window(15_000, 30.0, 3000, 100.0, claim, 1800.0, 0.0, 0, 0, 0.06, 0.08, 1, 1.48),
        ),
        (
            Window(12_000, 30.0, 2700, 90.0, claim, 2100.0, 0.02, 0, 0, 0.06, 0.1, 0, 1.5),
            Window(20_000, 30.0, 2300, 110.0, claim, 2100.0, 0.02, 0, 0, 0.06, 0.1, 0, 1.5),
        ),
    )
    # The history's three windows (N's: 100 runs/s, then 90, 110) over the two empty ones.
    assert result.beside.against(full.engine) == 0.889  # 100 / 112.5
    # Each empty window against the history windows on either side: 100/125, 90/125, 90/100,
    # 110/100.
    assert result.beside.spread(full.engine) == (0.72, 1.1)
    assert Beside((), ()).against(full.engine) is None
    lines = [line for line in markdown(result).splitlines() if "beside N" in line]
    assert len(lines) == 1 and lines[0].startswith("**The same run on an empty database")
    # In the order they ran: history, empty, history, empty, history.
    order = re.findall(r"(the history|empty) (\d+\.\d) runs/s", lines[0])
    assert order == [
        ("the history", "100.0"),
        ("empty", "125.0"),
        ("the history", "90.0"),
        ("empty", "100.0"),
        ("the history", "110.0"),
    ]
    assert (
        "empty 125.0 runs/s (1.48 trades a run; CPU ms per run 0.06 / 0.08; WAL 1800.0 B / 0.0 "
        "full pages)" in (lines[0])
    )
    assert lines[0].endswith(
        "**0.889×** (the history's mean over the empty databases'; one window over an empty one "
        "next to it: 0.72× to 1.1×; CPU: the engine's processes / the database's)."
    )
    # Without a middle point: 0 and N, one ratio column.
    result.mid, result.ratios_mid = None, {}
    table = markdown(result)
    assert "| measure | at 0 | at 10,000 runs | N / 0 |" in table
    assert all(line.count("|") == 5 for line in table.splitlines() if line.startswith("| "))


def test_the_private_cluster_is_sized_as_a_primary_where_the_server_has_less() -> None:
    gib = 2**30
    # This machine's development server: 128 MB of buffers (8 kB pages), 1 GB of WAL (MB).
    dev = {"shared_buffers": "16384", "max_wal_size": "1024"}
    assert primary_sizing(dev, 24 * gib) == {
        "shared_buffers": str(6 * gib // 8192),
        "max_wal_size": "16384",
    }
    # A quarter of the RAM, up to 8 GB.
    assert primary_sizing(dev, 64 * gib)["shared_buffers"] == str(8 * gib // 8192)
    # A server that has more keeps its own.
    big = {"shared_buffers": str(16 * gib // 8192), "max_wal_size": "65536"}
    assert primary_sizing(big, 64 * gib) == {}


def test_the_pinned_shape_puts_postgres_on_the_first_core_and_the_rest_on_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(history, "cores", lambda: [0, 1, 2, 3])
    shared, pinned = Shape.of(False), Shape.of(True)
    assert (shared.server, shared.client) == (None, None)
    assert (pinned.every, pinned.server, pinned.client) == ([0, 1, 2, 3], [0], [1, 2, 3])
    assert pinned.describe() == (
        "pinned: Postgres on core 0, the bench, the engine, redis and the commands on 1,2,3"
    )
    monkeypatch.setattr(history, "cores", lambda: [5])
    with pytest.raises(BenchError, match="--pinned needs at least 2 cores; this process may use 1"):
        Shape.of(True)
    assert Shape.of(False).describe() == "shared: Postgres and everything else on the same 1 cores"


def test_binding_the_process_moves_every_thread_and_what_they_start() -> None:
    have = sorted(os.sched_getaffinity(0))
    if len(have) < 2:
        pytest.skip("needs 2 cores to move a thread between")
    ready, done = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def idle() -> None:  # a thread started before the binding, as asyncio.to_thread's are
        ready.set()
        done.wait(10)
        seen["thread"] = sorted(os.sched_getaffinity(0))
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
            capture_output=True,
            text=True,
            check=True,
        )
        seen["child"] = child.stdout.strip()

    worker = threading.Thread(target=idle)
    worker.start()
    ready.wait(10)
    try:
        bind_process(have[1:])
        done.set()
        worker.join(10)
        assert sorted(os.sched_getaffinity(0)) == have[1:]
    finally:
        bind_process(have)
    assert seen == {"thread": have[1:], "child": str(have[1:])}
    assert sorted(os.sched_getaffinity(0)) == have
