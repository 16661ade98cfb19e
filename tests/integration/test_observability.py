"""Metrics move when runs happen, /readyz follows Redis while /livez stays up, the reader role
reads the views and nothing else, and the documented listener receives run notifications."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import asyncpg
import pytest

from tests.support.procs import seed_due, simctl, spawn, stop, wait_until
from tests.support.services import ROOT, RedisServer, free_port, url_for

pytestmark = pytest.mark.timeout(180)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = (
        re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+]+)"
    )
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


async def test_worker_metrics_move_when_runs_happen(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    await seed_due(pg, 300)
    env = {**env, "SIM_BATCH_SIZE": "100"}  # three batches
    port = free_port()
    worker = spawn(["worker"], {**env, "SIM_METRICS_PORT": str(port)})
    try:

        async def ready() -> bool:
            return get(port, "/readyz")[0] == 200

        await wait_until(ready, 30, "the worker's /readyz")
        before = get(port, "/metrics")[1]
        assert get(port, "/livez")[0] == 200
        assert simctl(["scheduler", "--once"], env).returncode == 0

        async def all_ran() -> bool:
            return bool(await pg.fetchval("SELECT count(*) FROM sim_runs") == 300)

        await wait_until(all_ran, 60, "300 runs")

        async def scraped() -> bool:
            return (
                metric(get(port, "/metrics")[1], "simengine_runs_total", 'outcome="applied"') >= 300
            )

        await wait_until(scraped, 10, "the applied counter to reach 300")
        after = get(port, "/metrics")[1]
    finally:
        stop(worker)
    applied = 'outcome="applied"'
    assert (
        metric(after, "simengine_runs_total", applied)
        - metric(before, "simengine_runs_total", applied)
        == 300
    )
    trades = await pg.fetchval("SELECT count(*) FROM trades")
    traded = sum(
        float(v) for v in re.findall(r"simengine_trades_total\{[^}]*\} ([0-9.e+]+)", after)
    )
    assert traded == trades > 0
    assert metric(after, "simengine_batch_seconds_count") == 3
    assert metric(after, "simengine_schedule_lag_seconds_count") == 300
    assert metric(after, "simengine_fees_usd_total") > 0


async def test_scheduler_stays_alive_and_turns_unready_while_redis_is_away(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    own_redis = RedisServer()
    own_redis.start()
    port = free_port()
    scheduler = spawn(
        ["scheduler"], {**env, "REDIS_URL": own_redis.url, "SIM_METRICS_PORT": str(port)}
    )
    try:

        async def ready() -> bool:
            return get(port, "/readyz") == (200, "ready\n")

        await wait_until(ready, 30, "/readyz to answer 200")
        assert get(port, "/livez") == (200, "alive\n")
        own_redis.stop()

        async def unready() -> bool:
            status, body = get(port, "/readyz")
            return status == 503 and body.startswith("not ready: redis:")

        await wait_until(unready, 30, "/readyz to answer 503 naming Redis")
        # Liveness is the process, not its dependencies: a probe must not restart it now.
        assert get(port, "/livez") == (200, "alive\n")
        assert get(port, "/healthz") == (
            200,
            "alive\n",
        )  # /livez's alias, for probes set up with it

        async def reported() -> bool:
            return scheduler.output().count('"redis.unavailable"') >= 2

        await wait_until(reported, 30, "the scheduler to report Redis away")
        own_redis.start_on_same_port()
        await wait_until(ready, 30, "/readyz to recover with Redis back")
        assert scheduler.popen.poll() is None
        assert "postgres.unavailable" not in scheduler.output()
    finally:
        stop(scheduler)
        own_redis.close()


async def test_reader_role_reads_the_views_and_nothing_else(
    pg: asyncpg.Connection, env: dict[str, str], db_name: str
) -> None:
    await seed_due(pg, 20)
    assert simctl(["scheduler", "--once"], env).returncode == 0
    assert simctl(["worker", "--burst"], env).returncode == 0
    role = f"reader_{db_name[-8:]}"
    env = {**env, "SIM_READER_PASSWORD": "r3ader-Pass"}
    granted = simctl(["grant-reader", role], env)
    assert granted.returncode == 0, granted.stderr
    assert simctl(["grant-reader", role], env).returncode == 0  # again: updates, no error
    bad = simctl(["grant-reader", 'x"; DROP ROLE postgres; --'], env)
    assert bad.returncode == 1
    url = url_for(db_name).replace("postgres@", f"{role}@", 1)
    reader = await asyncpg.connect(url)
    try:
        pnl = await reader.fetch("SELECT * FROM sim_pnl ORDER BY user_id")
        assert len(pnl) == 20
        assert all(
            r["total_pnl_usd"] == r["realised_pnl_usd"] + r["unrealised_pnl_usd"] for r in pnl
        )
        assert await reader.fetchval("SELECT count(*) FROM sim_positions") > 0
        assert await reader.fetchval("SELECT count(*) FROM sim_latest_prices") == 6
        assert await reader.fetchval("SELECT sum(runs) FROM sim_activity") == 20
        assert await reader.fetchval("SELECT count(*) FROM sim_run_log") == 20
        for forbidden in (
            "SELECT password_hash FROM users",
            "SELECT tax_id FROM users",
            "SELECT * FROM trades",
            "UPDATE users SET balance_usd = 0",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.execute(forbidden)
        assert "password_hash" not in {c for r in pnl for c in dict(r)}
    finally:
        await reader.close()
        await pg.execute(f'DROP OWNED BY "{role}"')
        await pg.execute(f'DROP ROLE "{role}"')


async def test_the_documented_listener_trusts_each_run_once(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    await seed_due(pg, 3)
    await pg.execute("UPDATE users SET sim_paused = true WHERE id = 3")  # its run comes last
    listener = subprocess.Popen(
        [sys.executable, str(ROOT / "docs" / "examples" / "listen_sim_run.py"), "--count", "3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "listening"
        # Any role can notify on any channel: a forged run must not be trusted.
        await pg.execute(
            'SELECT pg_notify(\'sim_run\', \'{"user_id": 1, "run_id": 999999, '
            '"scheduled_for": "2026-01-01T00:00:00Z", "trades_count": 50}\')'
        )
        assert simctl(["scheduler", "--once"], env).returncode == 0
        assert simctl(["worker", "--burst"], env).returncode == 0
        first = [json.loads(await asyncio.to_thread(listener.stdout.readline)) for _ in range(2)]
        # ... nor a genuine payload sent again: each run is acted on once.
        replayed = json.dumps(first[0])
        for _ in range(3):
            await pg.execute("SELECT pg_notify('sim_run', $1)", replayed)
        await pg.execute("UPDATE users SET sim_paused = false WHERE id = 3")
        assert simctl(["scheduler", "--once"], env).returncode == 0
        assert simctl(["worker", "--burst"], env).returncode == 0
        rest, errors = await asyncio.to_thread(listener.communicate, timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
    payloads = first + [json.loads(line) for line in rest.splitlines()]
    runs = await pg.fetch("SELECT id, user_id, trades_count FROM sim_runs ORDER BY id")
    assert len(runs) == 3
    assert sorted((p["run_id"], p["user_id"], p["trades_count"]) for p in payloads) == [
        (r["id"], r["user_id"], r["trades_count"]) for r in runs
    ]
    assert errors.count(f"run {first[0]['run_id']} again (a replay)") == 3
    assert "999999" in errors


async def test_a_worker_outlives_a_redis_restart(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    own_redis = RedisServer()
    own_redis.start()
    worker_env = {**env, "REDIS_URL": own_redis.url}
    port = free_port()
    worker = spawn(["worker"], {**worker_env, "SIM_METRICS_PORT": str(port)})
    try:

        async def ready() -> bool:
            return get(port, "/readyz")[0] == 200

        await wait_until(ready, 30, "the worker to start")
        own_redis.stop()

        async def outage_outlived() -> bool:
            # Two failed rounds: Redis stayed away longer than arq's own connection retries.
            return worker.output().count("redis.unavailable") >= 2

        await wait_until(outage_outlived, 60, "the worker to retry through a long outage")
        # Its health server outlives the arq Worker: answered, not refused.
        status, body = get(port, "/readyz")
        assert status == 503 and body.startswith("not ready: redis:"), (status, body)
        assert get(port, "/livez") == (200, "alive\n")
        assert "worker.stopped" not in worker.output()  # it has not stopped: it retries
        own_redis.start_on_same_port()
        await wait_until(ready, 60, "the worker to come back with Redis")
        await seed_due(pg, 50)
        assert simctl(["scheduler", "--once"], worker_env).returncode == 0

        async def ran() -> bool:
            return bool(await pg.fetchval("SELECT count(*) FROM sim_runs") == 50)

        await wait_until(ran, 60, "the restarted worker to run the new jobs")
        assert worker.popen.poll() is None
    finally:
        stop(worker)
        own_redis.close()
