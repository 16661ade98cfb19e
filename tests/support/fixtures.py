"""The server tiers' fixtures: a fresh database per test from one template per run, a private
Redis per test process.

Nothing here reaches a server until a test asks for one of these fixtures, so `tests/unit` runs
with Postgres and Redis unreachable. The template is built by whichever process first needs it
(under a file lock, so xdist workers build it once between them) and dropped by the controller
when the run ends, only if it was built."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from engine.market import Market
from simconfig import Settings
from store.db import connect, create_pool
from tests.support.services import (
    ROOT,
    RedisServer,
    build_template,
    create_database,
    drop_database,
    drop_template,
    url_for,
)
from workers.batch import BatchRunner

# A folder of the run's own, made by the controller and inherited by its xdist workers: it holds
# the lock the template is built under and the template's name once it exists.
RUN_DIR_ENV = "SIMENGINE_TEST_RUN_DIR"
SERVER_FIXTURES = frozenset(
    {"template", "db_name", "db_url", "pg", "redis_server", "redis_url", "env", "settings"}
)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        os.environ[RUN_DIR_ENV] = tempfile.mkdtemp(prefix="simengine-tests-")


def pytest_unconfigure(config: pytest.Config) -> None:
    # The controller outlives its workers: whatever template they built is done with here.
    if hasattr(config, "workerinput") or RUN_DIR_ENV not in os.environ:
        return
    run_dir = Path(os.environ.pop(RUN_DIR_ENV))
    built = run_dir / "template"
    try:
        if built.exists():
            drop_template(built.read_text())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A unit test that took a server fixture would make the unit tier need a server again.
    unit = ROOT / "tests" / "unit"
    wrong = [
        item.nodeid
        for item in items
        if item.path.is_relative_to(unit)
        and SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
    ]
    if wrong:
        raise pytest.UsageError(
            "tests/unit runs without a server; move these to tests/integration: " + ", ".join(wrong)
        )


def _run_template() -> str:
    """The run's template database, built by the first process to ask for it."""
    run_dir = Path(os.environ[RUN_DIR_ENV])
    built = run_dir / "template"
    with open(run_dir / "template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            built.write_text(build_template())
    return built.read_text()


@pytest.fixture(scope="session")
def template() -> str:
    return _run_template()


@pytest.fixture
def db_name(template: str) -> Iterator[str]:
    name = create_database(template)
    yield name
    drop_database(name)


@pytest.fixture
def db_url(db_name: str) -> str:
    return url_for(db_name)


@pytest.fixture
async def pg(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(db_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if redis_server.proc is None:
        redis_server.start()
    return redis_server.url


@pytest.fixture
def env(db_url: str, redis_url: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment for simctl subprocesses: this test's database, private Redis and queue."""
    queue = "simengine:test:" + request.node.name[:40]
    base = {k: v for k, v in os.environ.items() if not k.startswith("SIM_")}
    base.update(
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        SIM_QUEUE_NAME=queue,
        SIM_LOG_JSON="true",
        SIM_SCHEDULER_INTERVAL_MS="100",
        SIM_SEED="42",
    )
    return base


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    values: dict[str, Any] = {
        k.lower(): v for k, v in env.items() if k.startswith(("SIM_", "DATABASE_", "REDIS_"))
    }
    return Settings(_env_file=None, **values)


@pytest.fixture
async def runner(db_url: str, settings: Settings) -> AsyncIterator[BatchRunner]:
    """The workers' batch runner on the test's database: runs claims in-process, as a worker's
    job does (BatchRunner.run), without Redis."""
    pool = await create_pool(db_url, max_size=4)
    yield BatchRunner(pool, settings, Market(settings.market_params()))
    await pool.close()
