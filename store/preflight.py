"""A process's check at start: is the schema there, and may this role do what the engine does?

Without it a scheduler or worker on an unmigrated database, or with a read-only role, would log
the same error on every pass forever; with it, it exits 2 naming what to fix.
"""

from __future__ import annotations

from store.db import Conn
from store.errors import Misconfigured
from store.sqlfiles import query

# What the scheduler and the workers do to each table (see sql/queries.sql).
_NEEDS: dict[str, tuple[str, ...]] = {
    "users": ("SELECT", "UPDATE"),
    "portfolio": ("SELECT", "INSERT", "UPDATE"),
    "transactions": ("INSERT",),
    "trades": ("INSERT",),
    "sim_runs": ("SELECT", "INSERT"),
    "price_history": ("SELECT", "INSERT"),
    "price_import_spans": ("SELECT",),
    "fee_config": ("SELECT",),
    "withdrawals": ("SELECT",),
    "admin_audit": ("INSERT",),
}


async def check_engine_schema(conn: Conn) -> None:
    """Misconfigured naming the first missing table or privilege; None when all is there."""
    # Presence first: has_table_privilege raises on a table that does not exist.
    rows = await conn.fetch(query("tables_present", "migrate.sql"), list(_NEEDS))
    missing = [r["name"] for r in rows if not r["present"]]
    if missing:
        raise Misconfigured(
            f"the database DATABASE_URL names has no simengine schema (table {missing[0]} is "
            "missing): check DATABASE_URL, or run `simctl migrate` on it first"
        )
    tables, privileges = zip(
        *((table, p) for table, needed in _NEEDS.items() for p in needed), strict=True
    )
    refused = await conn.fetch(
        query("privileges_refused", "migrate.sql"), list(tables), list(privileges)
    )
    if refused:
        role = await conn.fetchval(query("current_role", "migrate.sql"))
        first = refused[0]
        raise Misconfigured(
            f"role {role} lacks {first['p']} on {first['t']} "
            f"({len(refused)} privilege(s) missing): DATABASE_URL needs the engine's role"
        )
