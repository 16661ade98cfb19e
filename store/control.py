"""The global switch of claims (migration 0012's sim_control): while paused, no scheduler
leases anyone; runs already queued still apply. `simctl claims` and the console share these."""

from __future__ import annotations

from typing import Any

from engine.text import check_text
from store.db import Conn
from store.errors import Refused, refusing
from store.runs import audit
from store.sqlfiles import query


async def claims_state(conn: Conn) -> dict[str, Any]:
    """Whether claims are paused, since when, by whom (a key fingerprint) and why."""
    row = await conn.fetchrow(query("claims_state", "console.sql"))
    assert row is not None  # migration 0012 inserts the one row
    return dict(row.items())


async def set_claims_paused(conn: Conn, actor: str, paused: bool, reason: str) -> dict[str, Any]:
    """Pause or resume every claim, with its admin_audit row (claims_pause / claims_resume) in
    the same transaction; Refused when claims already are in that state (nothing written)."""
    with refusing():
        check_text(reason, "reason", empty=True)
    async with conn.transaction():
        current = await conn.fetchval(query("claims_for_update", "console.sql"))
        if current == paused:
            raise Refused(f"claims are already {'paused' if paused else 'running'}")
        row = await conn.fetchrow(query("set_claims", "console.sql"), paused, actor, reason or None)
        assert row is not None
        action = "claims_pause" if paused else "claims_resume"
        audit_id = await audit(conn, actor, action, None, {"reason": reason})
    return {**dict(row.items()), "audit_id": audit_id}
