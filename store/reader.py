"""The reader role: SELECT on the read views and nothing else."""

from __future__ import annotations

import re

from store.db import Conn
from store.errors import Refused

READ_VIEWS = ("sim_latest_prices", "sim_positions", "sim_pnl", "sim_activity", "sim_run_log")
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


async def grant_reader(conn: Conn, role: str, password: str | None) -> list[str]:
    """Create or update `role` (LOGIN) so that it reads exactly the read views."""
    if not _ROLE.match(role):
        raise Refused(f"role name must match {_ROLE.pattern}, got {role!r}")
    async with conn.transaction():
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        # Identifiers cannot be bound parameters; format('%I') quotes the validated name.
        verb = "ALTER" if exists else "CREATE"
        statement = await conn.fetchval(
            "SELECT format('%s ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', $1::text, $2::text)",
            verb,
            role,
        )
        await conn.execute(statement)
        if password is not None:
            await conn.execute(
                await conn.fetchval(
                    "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", role, password
                )
            )
        db = await conn.fetchval("SELECT current_database()")
        for template in (
            "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %I",
            "REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM %I",
            "GRANT USAGE ON SCHEMA public TO %I",
        ):
            await conn.execute(
                await conn.fetchval("SELECT format($1::text, $2::text)", template, role)
            )
        await conn.execute(
            await conn.fetchval(
                "SELECT format('GRANT CONNECT ON DATABASE %I TO %I', $1::text, $2::text)", db, role
            )
        )
        for view in READ_VIEWS:
            await conn.execute(
                await conn.fetchval(
                    "SELECT format('GRANT SELECT ON %I TO %I', $1::text, $2::text)", view, role
                )
            )
    return list(READ_VIEWS)
