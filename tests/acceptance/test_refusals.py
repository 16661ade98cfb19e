"""What an operator meets when something is wrong: one line and exit 1 or 2, never a traceback,
and nothing changed. A missing schema, a role without privileges, an out-of-range value, a busy
metrics port, Redis away; and `simctl run` never pushes back a slot whose job was lost."""

from __future__ import annotations

import hashlib
import socket
import time
import uuid

import asyncpg
import pytest
from redis.asyncio import Redis

from store.errors import Refused
from store.users import set_flags
from tests.acceptance.test_cli import one_line_refusal
from tests.support.procs import seed_due, simctl, wait_until
from tests.support.services import _admin, free_port, url_for

pytestmark = pytest.mark.timeout(180)

KEY = "refusals-admin-key"


@pytest.fixture
def admin_env(env: dict[str, str]) -> dict[str, str]:
    return {
        **env,
        "SIM_ADMIN_KEYS_SHA256": hashlib.sha256(KEY.encode()).hexdigest(),
        "SIM_ADMIN_KEY": KEY,
    }


def test_a_database_without_the_schema_is_one_line_and_exit_2(env: dict[str, str]) -> None:
    name = f"simengine_t_{int(time.time())}_{uuid.uuid4().hex[:12]}"  # the tests' own pattern
    _admin(f'CREATE DATABASE "{name}"')
    try:
        bare = {**env, "DATABASE_URL": url_for(name)}
        for command in (["status"], ["reconcile"], ["scheduler", "--once"], ["worker", "--burst"]):
            result = simctl(command, bare)
            assert result.returncode == 2, (command, result.stderr)
            assert "simctl migrate" in one_line_refusal(result.stderr), command
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_role_without_privileges_is_one_line_and_exit_2(
    admin_env: dict[str, str], pg: asyncpg.Connection, db_name: str
) -> None:
    await seed_due(pg, 3)
    role = f"nopriv_{uuid.uuid4().hex[:10]}"
    await pg.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        weak = {**admin_env, "DATABASE_URL": url_for(db_name).replace("postgres@", f"{role}@", 1)}
        for command in (
            ["status"],
            ["reconcile"],
            ["run", "1"],
            ["users", "list"],
            ["users", "pause", "1"],
            ["scheduler", "--once"],
            ["worker", "--burst"],
        ):
            result = simctl(command, weak)
            assert result.returncode == 2, (command, result.stderr)
            line = one_line_refusal(result.stderr)
            assert "privilege" in line or "lacks" in line, (command, line)
    finally:
        await pg.execute(f'DROP OWNED BY "{role}"')
        await pg.execute(f'DROP ROLE "{role}"')


async def test_an_interval_beyond_the_column_is_refused_at_the_option_and_in_the_store(
    admin_env: dict[str, str], pg: asyncpg.Connection
) -> None:
    await seed_due(pg, 1)
    uid = await pg.fetchval("SELECT id FROM users")
    before = await pg.fetchval("SELECT sim_interval_s FROM users WHERE id = $1", uid)
    for command in (
        ["users", "create", "far@example.com", "--interval-s", "99999999999"],
        ["users", "set-interval", str(uid), "99999999999"],
        ["seed-demo", "--users", "1", "--interval-s", "99999999999"],
    ):
        result = simctl(command, admin_env)
        assert result.returncode == 2, (command, result.stderr)
        assert "2147483647" in one_line_refusal(result.stderr)
    with pytest.raises(Refused, match="interval"):
        await set_flags(pg, "test", "set_interval", uid, interval_s=2**31)
    assert await pg.fetchval("SELECT sim_interval_s FROM users WHERE id = $1", uid) == before
    assert await pg.fetchval("SELECT count(*) FROM users") == 1


@pytest.mark.parametrize("command", [["worker"], ["scheduler"]])
def test_a_busy_metrics_port_is_exit_2_at_start(env: dict[str, str], command: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = simctl(command, {**env, "SIM_METRICS_PORT": str(port)}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "SIM_METRICS_PORT" in one_line_refusal(result.stderr)


async def user_row(pg: asyncpg.Connection, uid: int) -> tuple[object, ...]:
    row = await pg.fetchrow(
        "SELECT sim_next_run_at, (SELECT max(until) FROM sim_leases WHERE users.id = ANY(user_ids)), "
        "sim_run_count FROM users WHERE id = $1",
        uid,
    )
    assert row is not None
    return tuple(row)


async def test_a_refused_run_changes_nothing(
    admin_env: dict[str, str], pg: asyncpg.Connection
) -> None:
    await seed_due(pg, 2)
    await pg.execute("UPDATE users SET sim_next_run_at = now() + interval '1 hour'")
    first, second = [r["id"] for r in await pg.fetch("SELECT id FROM users ORDER BY id")]
    before = await user_row(pg, first)
    away = {**admin_env, "REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0"}
    result = simctl(["run", str(first)], away)
    assert result.returncode == 2
    line = one_line_refusal(result.stderr)  # not arq's five retry lines
    assert "cannot reach Redis" in line and "hunter2" not in line
    assert await user_row(pg, first) == before  # no lease, not made due
    assert simctl(["users", "pause", str(second)], admin_env).returncode == 0
    paused_before = await user_row(pg, second)
    result = simctl(["run", str(second)], admin_env)
    assert result.returncode == 1
    assert "paused" in one_line_refusal(result.stderr)
    assert await user_row(pg, second) == paused_before


async def test_run_never_restarts_the_wait_of_a_lost_slot(
    env: dict[str, str], pg: asyncpg.Connection, redis_url: str
) -> None:
    await seed_due(pg, 2)
    first, second = [r["id"] for r in await pg.fetch("SELECT id FROM users ORDER BY id")]
    queue = env["SIM_QUEUE_NAME"]
    client = Redis.from_url(redis_url)
    try:
        # The scheduler leases both users and enqueues them; Redis loses the job. The lease is
        # long (10 min), so it cannot lapse on a slow box before the test is done with it: a
        # lapsed lease is the test's second half, with a short one.
        long = {**env, "SIM_LEASE_S": "600"}
        assert simctl(["scheduler", "--once"], long).returncode == 0
        slot, lease = (await user_row(pg, first))[:2]
        assert lease is not None
        await client.flushall()
        for _ in range(2):  # lost, run by hand, lost again, run again
            result = simctl(["run", str(first)], env)
            assert result.returncode == 0, result.stderr
            # The live lease is kept, not restarted: if this job is lost too, the slot still
            # comes back when the first lease ends.
            assert (await user_row(pg, first))[:2] == (slot, lease)
            assert await client.zcard(queue) == 1  # and the slot is on its way again now
            await client.flushall()

        # A lease that already lapsed is not renewed by `run`: the scheduler reclaims at once.
        short = {**env, "SIM_LEASE_S": "1"}
        # Take the second user out of the batch's lease (the first keeps it).
        await pg.execute(
            "UPDATE sim_leases SET user_ids = user_ids[1:1], slots_us = slots_us[1:1] "
            "WHERE user_ids = $1::bigint[]",
            [first, second],
        )
        assert simctl(["scheduler", "--once"], short).returncode == 0
        await client.flushall()

        async def lapsed() -> bool:
            return bool(
                await pg.fetchval(
                    "SELECT max(until) <= now() FROM sim_leases WHERE $1 = ANY(user_ids)", second
                )
            )

        await wait_until(lapsed, 10, "the short lease to lapse")
        lapsed_lease = (await user_row(pg, second))[1]
        assert simctl(["run", str(second)], env).returncode == 0
        assert (await user_row(pg, second))[1] == lapsed_lease
        await client.flushall()  # the run's job is lost as well
        assert simctl(["scheduler", "--once"], env).returncode == 0  # claims it at once
        assert await client.zcard(queue) == 1
        assert simctl(["worker", "--burst"], env).returncode == 0
    finally:
        await client.aclose()
    runs = await pg.fetch("SELECT user_id, scheduled_for FROM sim_runs ORDER BY user_id")
    assert [r["user_id"] for r in runs] == [second]
    assert simctl(["run", str(first)], env).returncode == 0
    assert simctl(["worker", "--burst"], env).returncode == 0
    runs = await pg.fetch("SELECT user_id, scheduled_for FROM sim_runs ORDER BY user_id")
    assert [(r["user_id"], r["scheduled_for"]) for r in runs][:1] == [(first, slot)]
    assert len(runs) == 2


@pytest.mark.parametrize("command", [["scheduler", "--once"], ["worker", "--burst"]])
def test_one_shot_processes_without_redis_say_so_in_one_line(
    env: dict[str, str], command: list[str]
) -> None:
    result = simctl(command, {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert result.returncode == 2
    assert "cannot reach Redis" in one_line_refusal(result.stderr)  # not arq's retry lines


@pytest.mark.parametrize("command", [["worker"], ["scheduler"]])
def test_processes_stop_at_start_for_a_database_that_waiting_cannot_bring(
    env: dict[str, str], command: list[str]
) -> None:
    missing = url_for(f"simengine_nonexistent_{uuid.uuid4().hex[:8]}")
    result = simctl(command, {**env, "DATABASE_URL": missing}, timeout=60)  # no waiting forever
    assert result.returncode == 2
    assert "does not exist" in one_line_refusal(result.stderr)
