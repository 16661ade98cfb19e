"""What `simctl status` reads from Postgres: due users, lag, runs, failures, the last ticks."""

from __future__ import annotations

from typing import Any

from store.db import Conn
from store.sqlfiles import query


async def status(conn: Conn) -> dict[str, Any]:
    """The status query's columns by name, in its order (the command prints them all)."""
    row = await conn.fetchrow(query("status"))
    assert row is not None
    return dict(row.items())
