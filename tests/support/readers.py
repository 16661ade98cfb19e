"""Sessions of the read role, made the way `simctl grant-reader` makes it, for tests that check
what that role can and cannot do."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from store.roles import grant_reader, scram_verifier
from tests.support.services import url_for

PASSWORD = "s3cret-Reader"


@contextlib.asynccontextmanager
async def reader_session(
    pg: asyncpg.Connection, db_name: str, prefix: str
) -> AsyncIterator[asyncpg.Connection]:
    """A connection as a new reader role (named `prefix` + the database's suffix), dropped after."""
    role = f"{prefix}_{db_name[-12:]}"
    await grant_reader(pg, role, verifier=scram_verifier(PASSWORD))
    conn = await asyncpg.connect(url_for(db_name), user=role, password=PASSWORD)
    try:
        yield conn
    finally:
        await conn.close()
        await pg.execute(f'DROP OWNED BY "{role}"')
        await pg.execute(f'DROP ROLE "{role}"')
