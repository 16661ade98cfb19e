"""`simctl bench --quick` runs end to end and reports every figure the benchmark promises.
No speed threshold: only the shape of the result and a ledger that still reconciles."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import redis

from tests.support.procs import simctl
from tests.support.services import server_url

pytestmark = pytest.mark.timeout(600)


def test_quick_bench_reports_every_figure_and_a_clean_ledger(
    env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    result = simctl(
        ["bench", "--quick", "--no-docs", "--json", str(out)],
        {**env, "DATABASE_URL": server_url()},
        timeout=540,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["engine"]["reconcile"] == {"clean": True, "discrepancies": 0}
    assert all(r["valid"] for r in data["ceiling"]["by_clients"].values())
    assert data["ceiling"]["best_runs_per_s"] > 0 and data["tpcb"]["best_tps"] > 0
    assert data["naive"]["runs_per_s"] > 0 and data["engine"]["runs_per_s"] > 0
    assert data["engine"]["trades_per_s"] > 0
    # The reported peak is the best of the peaks run (one in --quick).
    assert len(data["engine"]["peaks_runs_per_s"]) == 1
    assert data["engine"]["runs_per_s"] == max(data["engine"]["peaks_runs_per_s"])
    sustained = data["engine"]["sustained"]
    assert (
        sustained["runs"] > 0
        and 0 <= sustained["lag_p50_s"] <= sustained["lag_p99_s"] <= sustained["lag_max_s"]
    )
    assert set(data["engine"]["cpu_us_per_run"]) == {"workers", "scheduler", "redis", "postgres"}
    assert set(data["claim"]["ms_per_claim_by_users"]) == {"10000", "50000"}
    assert data["rss"]["ratio"] > 0
    for key in ("engine_vs_ceiling", "engine_vs_tpcb", "engine_vs_naive", "claim_largest_vs_10k"):
        assert data["ratios"][key] > 0
    assert "| ratio to ceiling |" in result.stdout
    # Nothing of the run is left in Redis (its queues, the jobs still in them).
    assert redis.Redis.from_url(env["REDIS_URL"]).keys("simbench_*") == []


async def test_a_bench_run_removes_its_queues_and_their_jobs_only(redis_url: str) -> None:
    from arq.constants import job_key_prefix

    from simctl.bench import _drop_queues
    from workers.codec import connect_redis

    # Names of this test's own (the Redis is shared by the tests of one process).
    run, other_run = f"simbench_{os.getpid()}1", f"simbench_{os.getpid()}12"
    queues = [f"{run}:engine", f"{run}:naive", f"{other_run}:engine", f"not_{run}"]
    pool = await connect_redis(redis_url)
    try:
        jobs: dict[str, list[str]] = {q: [] for q in queues}
        for queue in queues:
            for n in range(3):
                job = await pool.enqueue_job("run_batch", [n], [n], _queue_name=queue)
                assert job is not None
                jobs[queue].append(job_key_prefix + job.job_id)
        await _drop_queues(redis_url, run)
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
    assert data["runs"] == 1000 and data["reconcile"] == {"clean": True}
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
