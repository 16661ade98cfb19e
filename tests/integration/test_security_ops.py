"""What operators see and run: reconcile names what ran or was written ahead of its time,
`market show` shows only prices of ticks that have begun, `status` does not count a user in
failure backoff as due, and malformed configuration is one line, exit 2."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from engine.assets import ASSETS
from simtools.harness.services import free_port, redis_argv
from store.market import change_market, prices_now
from tests.support.procs import seed_due, simctl, spawn, stop, wait_until
from tests.support.readers import reader_session
from tests.support.services import create_database, drop_database, url_for

pytestmark = pytest.mark.timeout(180)


async def test_reconcile_names_a_run_ahead_of_its_commit_and_a_price_ahead_of_now(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    await seed_due(pg, 1)
    uid: int = await pg.fetchval("SELECT min(id) FROM users")
    clean = simctl(["reconcile"], env)
    assert clean.returncode == 0, clean.stderr
    run_id: int = await pg.fetchval(
        "INSERT INTO sim_runs (user_id, scheduled_for, started_at, finished_at, outcome, "
        "trades_count) VALUES ($1, now() + interval '2 days', now(), now(), 'applied', 0) "
        "RETURNING id",
        uid,
    )
    await pg.execute(
        "INSERT INTO price_history (asset, at, price_usd, source) "
        "VALUES ('ETH', date_trunc('minute', now()) + interval '1 day', 1, 'model')"
    )
    found = simctl(["reconcile"], env)
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"run {run_id} of user {uid}" in found.stdout
    assert "later than its commit" in found.stdout
    assert "ETH price at" in found.stdout and "later than now" in found.stdout
    as_json = simctl(["reconcile", "--json"], env)
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    assert data["clean"] is False and len(data["ahead_of_time"]) == 2


async def test_market_show_prints_the_prices_now_and_none_of_a_tick_to_come(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    await change_market(pg, "test", volatility={}, reseed=True, lead_s=3600, reason="rotation")
    expected = await prices_now(pg)
    shown = simctl(["market", "show", "--json"], env)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert set(data) == {"prices_now", "versions"}
    assert data["prices_now"]["at"] == expected["at"]
    assert set(data["prices_now"]["prices_usd"]) == set(ASSETS)
    ahead = data["versions"][1]
    assert all(a["start_price_usd"] is None for a in ahead["assets"].values() if not a["stable"])
    text = simctl(["market", "show"], env)
    assert text.returncode == 0, text.stderr
    assert f"prices at {expected['at']}" in text.stdout
    assert "seed" not in text.stdout.replace("reseed", "")
    assert "prices" in simctl(["market", "show", "--help"], env).stdout


async def test_status_does_not_count_a_user_in_failure_backoff_as_due(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    await seed_due(pg, 3)
    await pg.execute("UPDATE users SET sim_next_run_at = now() - interval '10 minutes'")
    # The user with the oldest slot failed and backs off for an hour.
    backing: int = await pg.fetchval("SELECT min(id) FROM users")
    await pg.execute(
        "UPDATE users SET sim_next_run_at = now() - interval '2 hours', sim_fail_count = 1, "
        "sim_claimed_until = now() + interval '1 hour' WHERE id = $1",
        backing,
    )
    result = simctl(["status", "--json"], env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["due_now"] == 2
    assert data["backing_off"] == 1
    assert 600 <= data["oldest_lag_s"] < 3600


def test_a_non_utf8_env_file_is_one_line_exit_2(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / ".env").write_bytes(b"SIM_SEED=\xff\xfe\n")
    result = simctl(["status"], env, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert ".env" in line and "UTF-8" in line


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
def test_a_malformed_demo_user_count_is_one_line_exit_2(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simtools.demo.run"],
        env={**os.environ, "SIMENGINE_DEMO_USERS": value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "SIMENGINE_DEMO_USERS" in line


# -- the migrate lock ---------------------------------------------------------------------------
# The advisory key migrate serialised on, and every table-lock mode a role could ask for.
OLD_MIGRATE_KEY = 0x51_6D_65_6E_67_69_6E_65
LOCK_MODES = (
    "ACCESS SHARE",
    "ROW SHARE",
    "ROW EXCLUSIVE",
    "SHARE UPDATE EXCLUSIVE",
    "SHARE",
    "SHARE ROW EXCLUSIVE",
    "EXCLUSIVE",
    "ACCESS EXCLUSIVE",
)


@pytest.fixture
async def reader(pg: asyncpg.Connection, db_name: str) -> AsyncIterator[asyncpg.Connection]:
    """A session of the read role, made the way `simctl grant-reader` makes it."""
    async with reader_session(pg, db_name, "migreader") as conn:
        yield conn


async def test_the_read_role_holding_every_lock_it_can_take_does_not_stop_migrate(
    reader: asyncpg.Connection, env: dict[str, str]
) -> None:
    assert await reader.fetchval("SELECT pg_try_advisory_lock($1)", OLD_MIGRATE_KEY)
    # One open transaction keeping every mode on schema_migrations it was allowed.
    tx = reader.transaction()
    await tx.start()
    try:
        for mode in LOCK_MODES:
            try:
                async with reader.transaction():  # a savepoint: a refusal undoes only itself
                    await reader.execute(f"LOCK TABLE schema_migrations IN {mode} MODE NOWAIT")
            except asyncpg.PostgresError:
                continue
        result = simctl(["migrate"], env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "up to date" in result.stdout
    finally:
        await tx.rollback()


# -- migrate's preflight: a database it would leave half-installed ---------------------------
@pytest.fixture
def fresh_url(db_url: str) -> Iterator[str]:
    """An empty database (not the migrated template), dropped afterwards."""
    del db_url
    name = create_database("template0")
    try:
        yield url_for(name)
    finally:
        drop_database(name)


@pytest.mark.parametrize(
    ("ddl", "named"),
    [
        ("CREATE TABLE sim_runs (id int)", "sim_runs"),
        ("CREATE TABLE price_history (asset text, at timestamptz)", "price_history"),
        ("CREATE VIEW sim_pnl AS SELECT 1 AS user_id, 0::numeric AS total_pnl_usd", "sim_pnl"),
    ],
)
async def test_migrate_and_plan_refuse_a_database_with_a_foreign_engine_object(
    fresh_url: str, env: dict[str, str], ddl: str, named: str
) -> None:
    conn = await asyncpg.connect(fresh_url)
    try:
        await conn.execute(ddl)
        before = await conn.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY 1"
        )
        run_env = {**env, "DATABASE_URL": fresh_url}
        for args in (["migrate", "--plan"], ["migrate"]):
            result = simctl(args, run_env)
            assert result.returncode == 1, (args, result.stdout, result.stderr)
            [line] = result.stderr.strip().splitlines()
            assert named in line, line
        after = await conn.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY 1"
        )
        assert after == before  # nothing created, schema_migrations included
    finally:
        await conn.close()


# -- Redis misconfiguration is configuration -----------------------------------------------------
@pytest.fixture(scope="module")
def locked_redis() -> Iterator[int]:
    """A private redis-server that wants a password; its port."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="simengine-redis-") as folder:
        argv = redis_argv(shutil.which("redis-server") or "redis-server", port, folder)
        proc = subprocess.Popen(
            [*argv, "--requirepass", "right-password"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
            yield port
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("command", [["status"], ["scheduler"], ["worker"], ["run", "1"]])
def test_a_redis_url_redis_refuses_is_exit_2_in_one_line_at_once(
    locked_redis: int, redis_url: str, env: dict[str, str], command: list[str]
) -> None:
    base = {**env, "SIM_METRICS_PORT": "0"}
    urls = {
        "wrong password": f"redis://:wrong-password@127.0.0.1:{locked_redis}/0",
        "no password": f"redis://127.0.0.1:{locked_redis}/0",
        "no such database": redis_url.rsplit("/", 1)[0] + "/99",
    }
    for case, url in urls.items():
        started = time.monotonic()
        result = simctl(command, {**base, "REDIS_URL": url}, timeout=30)
        assert result.returncode == 2, (case, result.stdout, result.stderr)
        assert time.monotonic() - started < 20, case
        assert "redis.unavailable" not in result.stderr, (case, result.stderr)
        assert "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert "REDIS_URL" in last and "wrong-password" not in last, (case, last)


# -- an idle worker polls Redis rarely, a busy one at SIM_WORKER_POLL_MS -----------------------
async def _polls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    entry = stats.get("cmdstat_zrangebyscore", {"calls": 0})
    return int(entry["calls"])


async def test_an_idle_worker_backs_off_its_polls_and_a_job_is_still_picked_at_once(
    pg: asyncpg.Connection, env: dict[str, str], redis_url: str
) -> None:
    await seed_due(pg, 1)
    uid: int = await pg.fetchval("SELECT min(id) FROM users")
    await pg.execute("UPDATE users SET sim_next_run_at = now() + interval '1 hour'")
    redis = Redis.from_url(redis_url)
    worker = spawn(["worker"], {**env, "SIM_METRICS_PORT": "0", "SIM_WORKER_POLL_MS": "5"})
    try:
        await wait_until(
            lambda: asyncio.sleep(0, "worker.started" in worker.output()), 30, "worker.started"
        )
        await asyncio.sleep(1)  # past the back-off's first steps
        before = await _polls(redis)
        await asyncio.sleep(2)
        idle = await _polls(redis) - before
        # Every 5 ms would be hundreds; backed off to 200 ms it is about ten.
        assert idle <= 20, idle
        started = time.monotonic()
        result = simctl(["run", str(uid), "--wait"], env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 10
        assert await pg.fetchval("SELECT count(*) FROM sim_runs WHERE user_id = $1", uid) == 1
    finally:
        stop(worker)
        await redis.aclose()
