"""A worker's log is one JSON stream, arq's own lines included, and a job's events name it."""

from __future__ import annotations

import json

import asyncpg
import pytest

from tests.support.procs import seed_due, simctl

pytestmark = pytest.mark.timeout(120)


async def test_a_workers_log_is_json_line_by_line_and_jobs_carry_their_id(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    await seed_due(pg, 30)
    env = {**env, "SIM_BATCH_SIZE": "10", "SIM_LOG_LEVEL": "debug", "SIM_LOG_JSON": "true"}
    assert simctl(["scheduler", "--once"], env).returncode == 0
    result = simctl(["worker", "--burst"], env)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert any(r.get("logger", "").startswith("arq") for r in records)  # arq's, rendered by us
    batches = [r for r in records if r["event"] == "batch.committed"]
    assert len(batches) == 3
    assert all(r["job_id"].startswith("sim:") and r["batch_size"] == 10 for r in batches)
    assert len({r["job_id"] for r in batches}) == 3
    assert sum(r["applied"] for r in batches) == 30
