"""The bench's scratch databases: one per phase, made fresh on entry and dropped on exit (a
phase that fails drops its database too), next to the admin URL's database on its server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

from simconfig import Settings
from simtools.bench import queries as sql
from store.db import connect


def db_url(base: str, name: str) -> str:
    """`base` with its database replaced by `name` (same server, credentials and options)."""
    return urlunsplit(urlsplit(base)._replace(path="/" + name))


@asynccontextmanager
async def scratch_database(
    admin_url: str,
    name: str,
    *,
    users: int = 0,
    due: bool = True,
    settings: Settings | None = None,
) -> AsyncIterator[str]:
    """A fresh database `name`, migrated and populated with `users` demo users (all due if
    `due`; the stored market from `settings` if given) when `users` > 0; yields its URL, then
    drops it, whatever happened inside."""
    admin = await connect(admin_url)
    try:
        await sql.create_database(admin, name)
    finally:
        await admin.close()
    url = db_url(admin_url, name)
    try:
        if users:
            conn = await connect(url)
            try:
                await sql.populate(conn, users, due=due, settings=settings)
            finally:
                await conn.close()
        yield url
    finally:
        admin = await connect(admin_url)
        try:
            await sql.drop_database(admin, name)
        finally:
            await admin.close()


async def drop_leftovers(admin_url: str, prefix: str) -> list[str]:
    """Drop every database named `prefix`_* (a run killed mid-phase leaves its own behind; the
    next run of the same pid, or this sweep at the end of a run, removes it). Returns them."""
    admin = await connect(admin_url)
    try:
        names = await sql.scratch_databases(admin, prefix)
        for name in names:
            await sql.drop_database(admin, name)
    finally:
        await admin.close()
    return names
