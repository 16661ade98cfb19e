"""`simctl bench --quick --pinned` runs end to end in both shapes and reports every figure and
floor the benchmark promises. No speed threshold: only the shape of the result, the floors
judged, and ledgers that still reconcile."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import redis

from tests.support.procs import SIMCTL, simctl
from tests.support.services import ROOT, server_url

pytestmark = pytest.mark.timeout(600)


def test_quick_bench_reports_both_shapes_every_floor_and_a_clean_ledger(
    env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    docs = ROOT / "docs" / "benchmarks.md"
    docs_before = docs.read_bytes()
    pinned = len(os.sched_getaffinity(0)) >= 2
    result = simctl(
        ["bench", "--quick", "--json", str(out), *(["--pinned"] if pinned else [])],
        {**env, "DATABASE_URL": server_url()},
        timeout=540,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    shapes = [data["shared"], *([data["pinned"]] if pinned else [])]
    if not pinned:
        assert data["pinned"] is None
    for shape in shapes:
        assert shape["engine"]["reconcile"] == {"clean": True, "discrepancies": 0}
        assert all(r["valid"] for r in shape["ceiling"]["by_clients"].values())
        assert shape["ceiling"]["best_runs_per_s"] > 0 and shape["tpcb"]["best_tps"] > 0
        assert shape["naive"]["runs_per_s"] > 0 and shape["engine"]["runs_per_s"] > 0
        assert shape["engine"]["trades_per_s"] > 0
        # The reported peak is the best of the peaks run (one in --quick).
        assert len(shape["engine"]["peaks_runs_per_s"]) == 1
        assert shape["engine"]["runs_per_s"] == max(shape["engine"]["peaks_runs_per_s"])
        sustained = shape["engine"]["sustained"]
        assert (
            sustained["runs"] > 0
            and 0 <= sustained["lag_p50_s"] <= sustained["lag_p99_s"] <= sustained["lag_max_s"]
        )
        cpu = shape["engine"]["cpu_us_per_run"]
        assert set(cpu) == {"workers", "scheduler", "redis", "postgres"}
        # Postgres and Redis run on this machine in the tests: every side is measured.
        assert all(v > 0 for v in cpu.values()), cpu
        assert shape["cpu"]["ceiling_postgres_us_per_run"] > 0
        assert shape["cpu"]["python_vs_ceiling_postgres"] > 0
        assert shape["cpu"]["engine_postgres_vs_ceiling"] > 0
        for key in ("engine_vs_ceiling", "engine_vs_tpcb", "engine_vs_naive"):
            assert shape["ratios"][key] > 0
    shared = data["shared"]
    assert set(shared["claim"]["ms_per_claim_by_users"]) == {"10000", "50000"}
    assert shared["rss"]["ratio"] > 0 and shared["ratios"]["claim_largest_vs_10k"] > 0
    if pinned:
        cluster = data["pinned"]["cluster"]
        assert cluster["postgres_cpus"] == [min(os.sched_getaffinity(0))]
        assert cluster["settings_differing"] == {}
        assert data["pinned"]["claim"] is None and data["pinned"]["rss"] is None
    # Every floor of the issue is listed, judged where measured; the ledgers reconcile.
    floors = {(f["shape"], f["name"]): f for f in data["floors"]}
    assert len(floors) == (10 if pinned else 9)
    assert all(
        (f["met"] is None) == (not pinned and f["shape"] == "pinned") for f in floors.values()
    )
    assert floors[("shared", "reconcile after the run")]["met"] is True
    assert "| ratio to ceiling |" in result.stdout and "| floor | shape |" in result.stdout
    # Without --docs a run edits nothing in the checkout.
    assert docs.read_bytes() == docs_before
    # Nothing of the run is left in Redis (its queues, the jobs still in them).
    assert redis.Redis.from_url(env["REDIS_URL"]).keys("simbench_*") == []


def test_pinned_refuses_a_single_core_and_steps_refuses_the_bench_flags(
    env: dict[str, str],
) -> None:
    one_core = subprocess.run(
        ["taskset", "-c", str(min(os.sched_getaffinity(0))), *SIMCTL, "bench", "--pinned"],
        env={**env, "DATABASE_URL": server_url()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert one_core.returncode == 2
    assert one_core.stderr.strip().splitlines() == [
        "simctl: bench: --pinned needs at least 2 cores (Postgres on one, everything else on "
        "the others); this process may use 1"
    ]
    steps = simctl(["bench", "--steps", "10", "--pinned"], env)
    assert steps.returncode == 2 and len(steps.stderr.strip().splitlines()) == 1


async def test_a_bench_run_removes_its_queues_and_their_jobs_only(redis_url: str) -> None:
    from arq.constants import job_key_prefix

    from simtools.bench.run import drop_queues
    from workers.codec import redis_from_url

    # Names of this test's own (the Redis is shared by the tests of one process).
    run, other_run = f"simbench_{os.getpid()}1", f"simbench_{os.getpid()}12"
    queues = [f"{run}:engine", f"{run}:naive", f"{other_run}:engine", f"not_{run}"]
    pool = await redis_from_url(redis_url)
    try:
        jobs: dict[str, list[str]] = {q: [] for q in queues}
        for queue in queues:
            for n in range(3):
                job = await pool.enqueue_job("run_batch", [n], [n], _queue_name=queue)
                assert job is not None
                jobs[queue].append(job_key_prefix + job.job_id)
        await drop_queues(redis_url, run)
        present = {q: await pool.exists(q) for q in queues}
        jobs_left = {q: sum([await pool.exists(k) for k in keys]) for q, keys in jobs.items()}
    finally:
        await pool.aclose()
    # The run's two queues and their jobs are gone; another run's and another queue's stay.
    assert present == {queues[0]: 0, queues[1]: 0, queues[2]: 1, queues[3]: 1}
    assert jobs_left == {queues[0]: 0, queues[1]: 0, queues[2]: 3, queues[3]: 3}


def test_steps_profile_names_every_statement_of_a_batch(
    env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "steps.json"
    result = simctl(
        ["bench", "--steps", "1000", "--json", str(out)],
        {**env, "DATABASE_URL": server_url(), "SIM_BATCH_SIZE": "100"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["runs"] == 1000 and data["reconcile"] == {"clean": True, "discrepancies": 0}
    steps = data["steps"]
    # One claim per batch plus the last, empty one; one transaction per batch.
    assert steps["claim_due"]["calls"] == 11
    for name in ("BEGIN", "batch_prelude", "lock_batch", "apply_batch", "COMMIT"):
        assert steps[name]["calls"] == 10, name
        assert steps[name]["client_us_per_run"] > 0, name
    # Postgres runs on this machine in the tests, so the server side is measured too.
    assert steps["apply_batch"]["server_us_per_run"] > 0
    assert data["worker_outside_statements_us_per_run"] > 0
    assert "| apply_batch |" in result.stdout
