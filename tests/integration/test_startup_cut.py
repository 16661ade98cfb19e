"""A worker or scheduler whose first connection is cut while it checks the schema (a Postgres
restart terminating the backends of a process still starting up) waits and retries; it does not
die with asyncpg's internal "cannot switch to state" error."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

import workers.deps
from simconfig import Settings
from store.preflight import check_engine_schema
from workers.deps import open_pool

pytestmark = pytest.mark.timeout(60)


async def test_a_connection_cut_during_the_startup_check_is_waited_out(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    async def cut_once(conn: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            # What asyncpg raised in CI when the backend was terminated under the check.
            raise asyncpg.InternalClientError(
                "cannot switch to state 11; another operation (2) is in progress"
            )
        await check_engine_schema(conn)

    monkeypatch.setattr(workers.deps, "check_engine_schema", cut_once)
    pool = await open_pool(settings, 1, asyncio.Event(), wait=True)
    assert pool is not None
    try:
        assert calls == 2
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()
