"""`simctl bench --history` at a tiny size runs end to end on its private cluster and reports
every figure at 0, at a middle point and at N, with ratios of N against 0 and against the middle
point, reconcile as the engine left it and right after a checkpoint the bench took; the soak
with retention runs where this checkout has `simctl prune` and is reported as not available
otherwise. No speed threshold: only the report's shape, numbers present and sane, and a ledger
that checks out."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.procs import SIMCTL, simctl
from tests.support.services import ROOT, server_url

pytestmark = pytest.mark.timeout(600)

TABLES = {"trades", "transactions", "sim_runs", "users", "portfolio", "price_history"}


def _timed_sane(t: dict[str, object]) -> None:
    seconds, longest = t["seconds"], t["longest_transaction_s"]
    assert isinstance(seconds, float) and isinstance(longest, float)
    assert t["exit_code"] == 0 and seconds > 0 and 0 <= longest <= seconds


def test_tiny_history_bench_reports_three_points_and_the_soak(
    env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "history.json"
    docs = ROOT / "docs" / "benchmarks.md"
    docs_before = docs.read_bytes()
    result = simctl(
        ["bench", "--history", "--runs", "80k", "--mid-runs", "4k", "--users", "1000",
         "--measure-s", "5", "--soak-min", "0.4", "--checkpoint-s", "4",
         "--checkpoint-rows", "3000", "--prune-s", "4", "--sample-s", "5", "--json", str(out)],
        {**env, "DATABASE_URL": server_url()},
        timeout=580,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["clean"] is True
    assert data["cluster"]["autovacuum"] == "on"
    zero, mid, full = data["zero"], data["mid"], data["full"]
    # Each point is where the engine stopped: past its target by what ran in its window and since.
    assert zero["runs"] == 0 and 4000 <= mid["runs"] < 80_000 <= full["runs"]
    assert full["trades"] > 0 and full["ledger_rows"] == full["trades"]
    assert data["settings"]["mid_runs"] == 4000 and data["settings"]["checkpoint_rows"] == 3000
    assert "SIM_CHECKPOINT_ROWS=3000" in data["settings"]["checkpoints"]
    assert "SIM_CHECKPOINT_INTERVAL_S=4" in data["settings"]["checkpoints"]
    for point in (zero, mid, full):
        engine = point["engine"]
        assert engine["runs"] > 0 and engine["runs_per_s"] > 0 and engine["seconds"] >= 2
        claim = engine["claim"]
        assert claim["passes"] > 0 and 0 < claim["median_ms"] <= claim["p95_ms"]
        assert claim["ms_per_1000_users"] > 0
        _timed_sane(point["reconcile"])
        if point["reconcile_full"] is not None:
            _timed_sane(point["reconcile_full"])
        # Reconcile as the engine left it, a checkpoint by the bench, reconcile again: nothing
        # since that checkpoint (the engine is stopped), judged from it.
        assert point["reconcile_rows_since"] == sum(
            point["reconcile"]["output"]["rows_since"].values()
        )
        checkpoint, after = point["checkpoint"], point["reconcile_after_checkpoint"]
        _timed_sane(checkpoint)
        _timed_sane(after)
        assert checkpoint["output"]["state"] == "verified"
        # Its window is the rows reconcile summed (ids a rolled-back batch took count there).
        assert 0 <= sum(checkpoint["output"]["rows"].values()) <= point["reconcile_rows_since"]
        assert 0 <= checkpoint["output"]["longest_transaction_s"] <= checkpoint["output"]["seconds"]
        assert after["output"]["from_checkpoint"] == checkpoint["output"]["id"]
        assert point["reconcile_after_rows_since"] == 0 and after["output"]["clean"] is True
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
    # The windows start after their fills; history grew, and so did its tables.
    assert (
        full["engine"]["history_runs_at_start"] >= 80_000 > mid["engine"]["history_runs_at_start"]
    )
    # The 0 window starts once every user has run once, which may be past the middle target.
    assert mid["engine"]["history_runs_at_start"] >= 4000
    assert mid["engine"]["history_runs_at_start"] >= zero["engine"]["history_runs_at_start"]
    assert full["history_bytes"] > mid["history_bytes"] > zero["history_bytes"]
    # Every history table is measured, a plain one as well as the partitioned sim_runs.
    for table in ("trades", "transactions", "sim_runs"):
        assert full["table_bytes"][table] > mid["table_bytes"][table] > 0, table
    # The same run on empty databases beside N (--beside 2 by default): each empty database a
    # fresh one whose runs start from no history, each history window from beyond the one before;
    # the ratio is the history's mean over the empty ones', and CPU is measured each side.
    beside = data["beside"]
    assert data["settings"]["beside"] == 2
    assert len(beside["empty"]) == len(beside["history_again"]) == 2
    history = [full["engine"], *beside["history_again"]]
    for empty in beside["empty"]:
        assert empty["runs"] > 0 and empty["history_runs_at_start"] < full["runs"] / 4
    starts = [w["history_runs_at_start"] for w in history]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    h_mean = sum(w["runs_per_s"] for w in history) / 3
    e_mean = sum(w["runs_per_s"] for w in beside["empty"]) / 2
    assert data["ratios"]["runs_per_s_beside"] == round(h_mean / e_mean, 3)
    for w in (*history, *beside["empty"]):
        assert w["engine_cpu_ms_per_run"] > 0 and w["db_cpu_ms_per_run"] > 0
    # The same run: the empty databases' users hold the history's wallets, so their runs make
    # the history's trades, not the fewer a run of fresh users makes (who hold USD alone, as at
    # the 0 point: a sell needs a holding).
    h_trades = sum(w["trades_per_run"] for w in history) / 3
    for w in beside["empty"]:
        assert zero["engine"]["trades_per_run"] * 1.2 < w["trades_per_run"]
        assert abs(w["trades_per_run"] / h_trades - 1) < 0.1, (w["trades_per_run"], h_trades)
    # The engine alone at each point (no checkpoint of the scheduler's) and, after a fill, the
    # fill's own window with the scheduler's checkpoints on.
    assert zero["engine_with_checkpoints"] is None
    for point in (mid, full):
        with_cp = point["engine_with_checkpoints"]
        assert with_cp["runs"] > 0 and with_cp["seconds"] >= 2
        # The fill's window comes before the point's commands, the engine alone's after them.
        assert (
            with_cp["history_runs_at_start"]
            < point["runs"]
            <= point["engine"]["history_runs_at_start"]
        )
    assert data["ratios_mid"]["runs_per_s_with_checkpoints"] == round(
        full["engine_with_checkpoints"]["runs_per_s"]
        / mid["engine_with_checkpoints"]["runs_per_s"],
        3,
    )
    assert data["ratios"]["runs_per_s_with_checkpoints"] is None
    # The scheduler's own checkpoints: none before 0; those of each fill, read from its log,
    # are the verified rows of sim_checkpoints at the end of the fill but the bench's own (at 0
    # and at the middle point).
    assert zero["scheduler_checkpoints"]["count"] == 0
    by_scheduler = mid["scheduler_checkpoints"]["count"] + full["scheduler_checkpoints"]["count"]
    assert by_scheduler > 0
    assert data["fill"]["checkpoints"].get("verified") == by_scheduler + 2
    assert "failed" not in data["fill"]["checkpoints"]
    for point in (mid, full):
        stats = point["scheduler_checkpoints"]
        if stats["count"]:
            assert 0 < stats["median_s"] <= stats["max_s"]
            assert 0 < stats["median_rows"] <= stats["max_rows"]
    assert data["fill"]["runs_written"] >= full["runs"] and data["fill"]["runs_per_s"] > 0
    ratios = data["ratios"]
    assert ratios["runs_per_s"] == round(
        full["engine"]["runs_per_s"] / zero["engine"]["runs_per_s"], 3
    )
    assert all(ratios[k] > 0 for k in ("reconcile_s", "reconcile_after_checkpoint_s", "pnl_sum_s"))
    to_mid = data["ratios_mid"]
    assert to_mid["reconcile_after_checkpoint_s"] == round(
        full["reconcile_after_checkpoint"]["seconds"]
        / mid["reconcile_after_checkpoint"]["seconds"],
        3,
    )
    assert to_mid["runs_per_s"] == round(
        full["engine"]["runs_per_s"] / mid["engine"]["runs_per_s"], 3
    )
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
        # On slots at the default rate: 1,000 users / 278 runs a second, every 4 s.
        assert soak["interval_s"] == 4 and soak["rate_per_s"] == 250.0
        lag = soak["lag_quiet"]
        assert lag["runs"] > 0 and 0 <= lag["median_s"] <= lag["p95_s"] <= lag["max_s"]
    else:
        assert "no `simctl prune`" in soak["reason"]
        assert "Soak with retention: not available" in result.stdout
    assert (
        f"| measure | at 0 | at {mid['runs']:,} runs | at {full['runs']:,} runs | N / 0 | N / mid |"
        in result.stdout
    )
    # Without --docs a run edits nothing in the checkout.
    assert docs.read_bytes() == docs_before


def test_history_options_need_history_and_a_count(env: dict[str, str]) -> None:
    alone = simctl(["bench", "--runs", "1M", "--mid-runs", "100k", "--soak-min", "5"], env)
    assert alone.returncode == 2
    assert alone.stderr.strip().splitlines() == [
        "simctl: bench: --runs, --mid-runs, --soak-min go with --history only"
    ]
    rows = simctl(["bench", "--checkpoint-rows", "5000"], env)
    assert rows.returncode == 2 and "--checkpoint-rows go with --history only" in rows.stderr
    above = simctl(["bench", "--history", "--runs", "8k", "--mid-runs", "8k"], env)
    assert above.returncode == 2
    assert "--mid-runs (8,000) must be below --runs (8,000)" in above.stderr
    odd = simctl(["bench", "--history", "--mid-runs", "half"], env)
    assert odd.returncode == 2 and "--mid-runs takes a positive count" in odd.stderr
    bad = simctl(["bench", "--history", "--runs", "ten"], env)
    assert bad.returncode == 2 and "--runs takes a positive count" in bad.stderr
    for item in ("shared_buffers", "=4GB", "shared_buffers=4GB\narchive_command=x"):
        refused = simctl(["bench", "--history", "--pg-set", item], env)
        assert refused.returncode == 2 and "--pg-set takes NAME=VALUE" in refused.stderr, item
    mixed = simctl(["bench", "--history", "--quick"], env)
    assert mixed.returncode == 2 and len(mixed.stderr.strip().splitlines()) == 1
    assert "takes no --quick or --steps" in mixed.stderr
    # The pinned shape needs a core for Postgres and one for the rest: refused before it starts.
    one = subprocess.run(
        ["taskset", "-c", "0", *SIMCTL, "bench", "--history", "--pinned", "--runs", "8k"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert one.returncode == 2
    assert "--pinned needs at least 2 cores" in one.stderr and "may use 1" in one.stderr
