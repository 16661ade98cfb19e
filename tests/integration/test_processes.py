"""Heartbeats (migration 0013's sim_processes): real schedulers and workers show up within a
beat, keep beating, leave on a clean stop; a killed one stays until unseen for a while (gone)
and a scheduler forgets it after a day. The console's overview and `simctl status --json` show
them; the read role can neither read nor write the table."""

from __future__ import annotations

import json
import signal
from typing import Any

import asyncpg
import httpx
import pytest

from console.app import create_app
from simconfig import Settings
from tests.support.procs import Proc, simctl, spawn, stop, wait_until
from tests.support.readers import reader_session


async def _rows(pg: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    rows = await pg.fetch(
        "SELECT pid, kind, seen_at, now() - seen_at AS age, version, queue FROM sim_processes"
    )
    return {r["pid"]: r for r in rows}


def _status(env: dict[str, str]) -> dict[int, dict[str, Any]]:
    done = simctl(["status", "--json"], env)
    assert done.returncode == 0, done.stderr
    return {p["pid"]: p for p in json.loads(done.stdout)["processes"]}


async def _overview(settings: Settings) -> dict[str, Any]:
    app = create_app(settings, redis=False, heartbeat=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as http,
    ):
        page = await http.get("/")
        assert page.status_code == 200
        data: dict[str, Any] = (await http.get("/api/overview")).json()
        data["html"] = page.text
        return data


async def test_a_scheduler_and_a_worker_beat_and_leave_on_a_clean_stop(
    pg: asyncpg.Connection, env: dict[str, str], settings: Settings
) -> None:
    procs: list[Proc] = [spawn(["scheduler"], env), spawn(["worker"], env)]
    scheduler, worker = (p.popen.pid for p in procs)
    try:

        async def both_seen() -> bool:
            rows = await _rows(pg)
            return {scheduler, worker} <= rows.keys()

        await wait_until(both_seen, 60, "both processes' rows")
        first = await _rows(pg)
        assert first[scheduler]["kind"] == "scheduler" and first[worker]["kind"] == "worker"
        for pid in (scheduler, worker):
            assert first[pid]["age"].total_seconds() < 10
            assert first[pid]["version"] and first[pid]["queue"]

        async def beat_again() -> bool:  # each beats every 5 s, not only at start
            rows = await _rows(pg)
            return all(rows[p]["seen_at"] > first[p]["seen_at"] for p in (scheduler, worker))

        await wait_until(beat_again, 30, "a second beat of each")

        shown = _status(env)
        assert shown[scheduler]["kind"] == "scheduler" and not shown[scheduler]["gone"]
        assert shown[worker]["kind"] == "worker" and not shown[worker]["gone"]
        table = simctl(["status"], env)
        assert f"pid {scheduler}" in table.stdout and f"pid {worker}" in table.stdout

        data = await _overview(settings)
        assert data["schedulers_seen"] == 1 and data["workers_seen"] == 1
        assert data["processes_gone"] == 0
        assert {p["pid"] for p in data["processes"]} == {scheduler, worker}
        assert f"<td>{scheduler}</td>" in data["html"] and f"<td>{worker}</td>" in data["html"]
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0, 0]
    assert await _rows(pg) == {}  # a clean stop deletes the row


async def test_a_killed_worker_shows_as_gone_and_a_scheduler_forgets_it_after_a_day(
    pg: asyncpg.Connection, env: dict[str, str], settings: Settings
) -> None:
    worker = spawn(["worker"], env)
    pid = worker.popen.pid

    async def seen() -> bool:
        return pid in await _rows(pg)

    await wait_until(seen, 60, "the worker's row")
    assert stop(worker, signal.SIGKILL) == -signal.SIGKILL
    assert pid in await _rows(pg)  # no clean stop: the row stays
    assert not _status(env)[pid]["gone"]
    # A minute unseen (as if the clock had moved on; the killed process cannot beat): gone.
    await pg.execute("UPDATE sim_processes SET seen_at = now() - interval '1 minute'")
    assert _status(env)[pid]["gone"]
    data = await _overview(settings)
    assert data["workers_seen"] == 0 and data["processes_gone"] == 1
    assert "gone" in data["html"]
    # Unseen for more than a day: the next scheduler's beat deletes it.
    await pg.execute("UPDATE sim_processes SET seen_at = now() - interval '25 hours'")
    scheduler = spawn(["scheduler"], env)
    try:

        async def forgotten() -> bool:
            rows = await _rows(pg)
            return scheduler.popen.pid in rows and pid not in rows

        await wait_until(forgotten, 60, "the dead worker's row forgotten")
    finally:
        assert stop(scheduler) == 0


async def test_the_console_beats_on_its_own_connection_and_leaves(
    pg: asyncpg.Connection, settings: Settings
) -> None:
    app = create_app(settings, enable_actions=False, redis=False)
    async with app.router.lifespan_context(app):

        async def seen() -> bool:
            return bool(
                await pg.fetchval("SELECT count(*) = 1 FROM sim_processes WHERE kind = 'console'")
            )

        await wait_until(seen, 30, "the console's row")
    assert await pg.fetchval("SELECT count(*) FROM sim_processes") == 0


async def test_the_read_role_can_neither_read_nor_write_the_heartbeats(
    pg: asyncpg.Connection, db_name: str
) -> None:
    await pg.execute(
        "INSERT INTO sim_processes (host, pid, started_at, kind) VALUES ('h', 1, now(), 'worker')"
    )
    async with reader_session(pg, db_name, "procs_reader") as reader:
        for sql in (
            "SELECT * FROM sim_processes",
            "INSERT INTO sim_processes (host, pid, started_at, kind)"
            " VALUES ('x', 2, now(), 'scheduler')",
            "UPDATE sim_processes SET seen_at = now()",
            "DELETE FROM sim_processes",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.execute(sql)
    assert await pg.fetchval("SELECT count(*) FROM sim_processes") == 1
