"""scripts/run, the README's first command, brings the demo up with local or embedded services."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.services import ROOT

pytestmark = pytest.mark.timeout(600)


def run_demo(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SIM_", "DATABASE_URL", "REDIS_URL"))
    }
    env.update(SIMENGINE_DEMO_SECONDS="6", SIMENGINE_DEMO_USERS="300", **extra_env)
    return subprocess.run(
        [str(ROOT / "scripts" / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )


def runs_applied(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stderr[-3000:]
    last = [line for line in result.stderr.splitlines() if "runs applied" in line]
    assert last, result.stderr[-3000:]
    return int(last[-1].split(" with ")[1].split()[0])


def test_the_demo_runs_on_the_configured_services(db_url: str, redis_url: str) -> None:
    result = run_demo({"DATABASE_URL": db_url, "REDIS_URL": redis_url})
    assert "Postgres: DATABASE_URL" in result.stderr
    assert runs_applied(result) > 0
    assert "runs/s=" in result.stdout


def test_the_demo_runs_with_embedded_services_when_forced() -> None:
    result = run_demo({"SIMENGINE_EMBEDDED": "1"})
    assert "starting an embedded server" in result.stderr
    assert runs_applied(result) > 0
    assert "stopping the embedded server" in result.stderr
