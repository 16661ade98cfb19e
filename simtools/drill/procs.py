"""The drill's own pieces around the harness: its error, and a monitor connection that
outlives the Postgres crash it watches."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from simtools.harness.errors import ToolError
from simtools.harness.procs import with_app_name
from store.db import connect
from store.errors import StoreError


class DrillError(ToolError):
    """The drill could not set itself up (missing binary, a step that failed): exit 2."""


def now_utc() -> datetime:
    return datetime.now(UTC)


class Monitor:
    """A connection that survives the Postgres crash it watches: reconnected on demand."""

    def __init__(self, url: str) -> None:
        self.url = with_app_name(url, "drill-monitor")
        self.conn: asyncpg.Connection | None = None

    async def call(self, fn: Callable[[asyncpg.Connection], Any]) -> Any:
        """fn(conn), reconnecting first if needed; None while Postgres is away."""
        try:
            if self.conn is None or self.conn.is_closed():
                self.conn = await connect(self.url)
            return await fn(self.conn)
        except (StoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await self.close()
            return None

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.terminate()
            self.conn = None
