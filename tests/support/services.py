"""Test services: a template database built by the migrations, a fresh database per test, and a
private redis-server per test process (so FLUSHALL and restarts never touch anyone else's)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from simconfig import Settings
from simtools.harness.services import PrivateRedis
from simtools.harness.services import free_port as free_port  # the tests take it from here
from store.db import connect
from store.market import ensure_market
from store.migrate import migrate

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def server_url() -> str:
    return os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def url_for(database: str) -> str:
    parts = urlsplit(server_url())
    return urlunsplit(parts._replace(path="/" + database))


def admin_url() -> str:
    return url_for(urlsplit(server_url()).path.lstrip("/") or "postgres")


def in_thread(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a private loop in another thread (safe from sync fixtures)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(fn())).result()


TEMPLATE_PREFIX = "simengine_tpl_"
# Names these tests give databases: with a creation time, or time-less (left by older checkouts'
# runs, recognised so that they are dropped too).
_OURS = re.compile(
    r"^simengine_(?:(?:tpl|t)_(?P<stamp>\d{10})_[0-9a-f]{8,12}|tpl_[0-9a-f]{12}|t_[0-9a-f]{16})$"
)
STALE_AFTER_S = 6 * 3600


def template_name() -> str:
    """A template of this run's own: test runs at once (two checkouts) never share or drop one."""
    return f"{TEMPLATE_PREFIX}{int(time.time())}_{uuid.uuid4().hex[:8]}"


def build_template() -> str:
    """Build this run's template database from the migrations; drop templates and test databases
    left behind by runs that were killed (older than STALE_AFTER_S, by the time in their name)."""
    name = template_name()

    async def go() -> None:
        admin = await asyncpg.connect(admin_url())
        try:
            rows = await admin.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE 'simengine\\_t%'"
            )
            for row in rows:
                found = _OURS.match(row["datname"])
                if found is None:
                    continue  # not a database these tests made
                stamp = found.group("stamp")
                if stamp is None or time.time() - int(stamp) > STALE_AFTER_S:
                    await admin.execute(f'ALTER DATABASE "{row["datname"]}" WITH IS_TEMPLATE false')
                    await admin.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
            conn = await connect(url_for(name))
            try:
                await migrate(conn)
                # What the first `simctl migrate` does next: store the market (seed 42, as the
                # tests' SIM_SEED says).
                await ensure_market(conn, Settings(_env_file=None, sim_seed=42))
            finally:
                await conn.close()
            await admin.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true')
        finally:
            await admin.close()

    in_thread(go)
    return name


def drop_template(name: str) -> None:
    _admin(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE false')
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(statement: str) -> None:
    """One statement on the server's admin database (CREATE/DROP DATABASE cannot be bound)."""

    async def go() -> None:
        admin = await asyncpg.connect(admin_url())
        try:
            await admin.execute(statement)
        finally:
            await admin.close()

    in_thread(go)


def create_database(template: str) -> str:
    name = f"simengine_t_{int(time.time())}_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def drop_database(name: str) -> None:
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class RedisServer(PrivateRedis):
    """The harness's private redis-server: start, stop (really) and restart it."""

    def start_on_same_port(self) -> None:
        """Start again after stop(): a restart, as an operator would see it."""
        self.start()
