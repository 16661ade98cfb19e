"""Fixtures shared by every tier: a fresh database per test, a private Redis per test process."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from simconfig import Settings
from store.db import connect
from tests.support.services import (
    RedisServer,
    build_template,
    create_database,
    drop_database,
    drop_template,
    url_for,
)


def pytest_configure(config: pytest.Config) -> None:
    # The controller (or a run without xdist) builds the template once per run; workers inherit it.
    if not hasattr(config, "workerinput"):
        os.environ["SIMENGINE_TEST_TEMPLATE"] = build_template()


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and "SIMENGINE_TEST_TEMPLATE" in os.environ:
        drop_template(os.environ.pop("SIMENGINE_TEST_TEMPLATE"))


@pytest.fixture(scope="session")
def template() -> str:
    return os.environ["SIMENGINE_TEST_TEMPLATE"]


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
