"""`simctl bench --history` at a tiny size runs end to end on its private cluster and reports
every figure at 0 and at N, with ratios against the 0 point; the soak with retention runs where
this checkout has `simctl prune` and is reported as not available otherwise. No speed
threshold: only the report's shape, numbers present and sane, and a ledger that checks out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.procs import simctl
from tests.support.services import ROOT, server_url

pytestmark = pytest.mark.timeout(420)

TABLES = {"trades", "transactions", "sim_runs", "users", "portfolio", "price_history"}


def _timed_sane(t: dict[str, object]) -> None:
    seconds, longest = t["seconds"], t["longest_transaction_s"]
    assert isinstance(seconds, float) and isinstance(longest, float)
    assert t["exit_code"] == 0 and seconds > 0 and 0 <= longest <= seconds


def test_tiny_history_bench_reports_both_points_and_the_soak(
    env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "history.json"
    docs = ROOT / "docs" / "benchmarks.md"
    docs_before = docs.read_bytes()
    result = simctl(
        ["bench", "--history", "--runs", "8k", "--users", "1000", "--measure-s", "2",
         "--soak-min", "0.4", "--checkpoint-s", "4", "--prune-s", "4", "--sample-s", "5",
         "--json", str(out)],
        {**env, "DATABASE_URL": server_url()},
        timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["clean"] is True
    assert data["cluster"]["autovacuum"] == "on"
    zero, full = data["zero"], data["full"]
    assert zero["runs"] == 0 and full["runs"] >= 8000
    assert full["trades"] > 0 and full["ledger_rows"] == full["trades"]
    for point in (zero, full):
        engine = point["engine"]
        assert engine["runs"] > 0 and engine["runs_per_s"] > 0 and engine["seconds"] >= 2
        claim = engine["claim"]
        assert claim["passes"] > 0 and 0 < claim["median_ms"] <= claim["p95_ms"]
        assert claim["ms_per_1000_users"] > 0
        _timed_sane(point["reconcile"])
        if point["reconcile_full"] is not None:
            _timed_sane(point["reconcile_full"])
        status = point["status"]
        # Both measured; their difference may be below zero on a busy box (status at 0 costs
        # next to nothing), so no order between them is asserted.
        assert status["exit_code"] == 0 and status["status_s"] > 0 and status["process_start_s"] > 0
        assert status["above_start_s"] == round(status["status_s"] - status["process_start_s"], 3)
        assert point["pnl_sum_s"] > 0
        assert set(point["table_bytes"]) >= TABLES
        assert point["history_bytes"] == sum(
            point["table_bytes"][t] for t in ("trades", "transactions", "sim_runs")
        )
    # The window at N starts after the fill; history grew, and so did its tables.
    assert full["engine"]["history_runs_at_start"] >= 8000 > zero["engine"]["history_runs_at_start"]
    assert full["history_bytes"] > zero["history_bytes"]
    assert data["fill"]["runs_written"] >= full["runs"] and data["fill"]["runs_per_s"] > 0
    ratios = data["ratios"]
    assert ratios["runs_per_s"] == round(
        full["engine"]["runs_per_s"] / zero["engine"]["runs_per_s"], 3
    )
    assert all(ratios[k] > 0 for k in ("reconcile_s", "pnl_sum_s"))
    soak = data["soak"]
    if soak["available"]:
        assert soak["clean"] is True and soak["samples"]
        # Every prune removed rows or found the scheduler's checkpoint holding the lease.
        done = [p for p in soak["prunes"] if p["exit_code"] == 0]
        assert sum(sum(p["output"]["rows"].values()) for p in done) > 0
        assert all(p["exit_code"] == 0 or "history lease" in p["stderr"] for p in soak["prunes"])
        assert soak["reconcile_full"]["exit_code"] == 0 and soak["doubled_slots"] == 0
        counts = soak["run_counts"]
        assert counts["users_differing"] == 0 and counts["counted"] == counts["explained"] > 0
        assert soak["checkpoints"].get("verified", 0) > 0 and "failed" not in soak["checkpoints"]
        assert soak["runs_per_s_quiet"] > 0
    else:
        assert "no `simctl prune`" in soak["reason"]
        assert "Soak with retention: not available" in result.stdout
    assert "| measure | at 0 |" in result.stdout
    # Without --docs a run edits nothing in the checkout.
    assert docs.read_bytes() == docs_before


def test_history_options_need_history_and_a_count(env: dict[str, str]) -> None:
    alone = simctl(["bench", "--runs", "1M", "--soak-min", "5"], env)
    assert alone.returncode == 2
    assert alone.stderr.strip().splitlines() == [
        "simctl: bench: --runs, --soak-min go with --history only"
    ]
    bad = simctl(["bench", "--history", "--runs", "ten"], env)
    assert bad.returncode == 2 and "--runs takes a positive count" in bad.stderr
    mixed = simctl(["bench", "--history", "--pinned"], env)
    assert mixed.returncode == 2 and len(mixed.stderr.strip().splitlines()) == 1
