"""Users as operators see them: find one, create, steer (flags, interval, strategy), delete,
show, list, and make one due now. Each change runs in one transaction with its admin_audit row
(the columns that changed, before and after)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, TypedDict, cast

from engine.assets import ASSETS
from engine.errors import UnknownStrategy
from engine.strategies import make_strategy
from engine.text import check_text
from engine.values import check_interval, parse_email, parse_user
from store.db import Conn, Record, refused_on
from store.errors import NotFound, Refused, refusing
from store.runs import audit
from store.sqlfiles import query

# What an audited change reports: exactly the details its admin_audit row holds.
AuditDetails = dict[str, Any]


class UserListing(TypedDict):
    """A row of `users list`."""

    id: int
    email: str
    full_name: str | None
    balance_usd: Decimal
    portfolio_value_usd: Decimal
    sim_enabled: bool
    sim_paused: bool
    sim_strategy: str | None
    sim_interval_s: int
    sim_next_run_at: datetime | None
    sim_run_count: int
    deleted: bool


async def resolve_user(conn: Conn, user: str) -> int:
    """A numeric id or an email (in any case) to a user id; NotFound naming it otherwise, Refused
    for an email that matches several users' in different cases but none exactly."""
    ref = parse_user(user)  # Rejected for `-1`, `²`, `١`: an id is ASCII digits
    if isinstance(ref, int):
        if ref < 2**63 and await conn.fetchval(query("user_exists"), ref):
            return ref
        raise NotFound(f"no user with id {ref}")
    text = ref
    rows = await conn.fetch(query("user_by_email"), text)
    if not rows:
        raise NotFound(f"no user with email {text!r}")
    if len(rows) > 1 and not rows[0]["exact"]:
        raise Refused(f"several users have email {text!r} in other cases: name one by its id")
    return int(rows[0]["id"])


async def locked_user(conn: Conn, user_id: int) -> Record:
    """The user's row, locked for the change under way (user_snapshot); NotFound otherwise."""
    row = await conn.fetchrow(query("user_snapshot"), user_id)
    if row is None:
        raise NotFound(f"no user with id {user_id}")
    return row


def _snapshot(row: Record) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in row.items()}


async def audit_change(
    conn: Conn, actor: str, action: str, user_id: int, before: Record, **extra: Any
) -> AuditDetails:
    """Audit a change of a user row: the columns that changed, before and after."""
    row = await conn.fetchrow(query("user_snapshot"), user_id)
    assert row is not None
    old, new = _snapshot(before), _snapshot(row)
    changes = {k: {"before": old[k], "after": v} for k, v in new.items() if old[k] != v}
    # Round-trip through JSON so the caller sees exactly what the audit row holds.
    details: AuditDetails = json.loads(json.dumps({"changes": changes, **extra}, default=str))
    await audit(conn, actor, action, user_id, details)
    return details


def refuse_closed(user: Record, what: str) -> None:
    """Money never moves into (or out of) a deleted or deactivated account."""
    if user["deleted_at"] is not None:
        raise Refused(f"user {user['id']} is deleted: no {what}")
    if not user["is_active"]:
        raise Refused(f"user {user['id']} is deactivated: no {what}")


def _check_strategy(name: str, params: Mapping[str, Any]) -> None:
    try:
        make_strategy(name, params)
    except UnknownStrategy as exc:
        raise Refused(str(exc)) from None


async def create_user(
    conn: Conn,
    actor: str,
    email: str,
    full_name: str,
    deposit: Decimal,
    enable: bool,
    interval_s: int,
    strategy: str | None,
) -> int:
    with refusing():
        email = parse_email(email)
        check_text(full_name, "--name", "name", empty=True)
        check_interval(interval_s)
    if strategy is not None:
        _check_strategy(strategy, {})
    async with conn.transaction():
        # The unique index is on the stored text; an adopted mixed-case address is the same one.
        if await conn.fetch(query("user_by_email"), email):
            raise Refused(f"a user with email {email} already exists")
        with refused_on("unique", f"a user with email {email} already exists"):
            user_id: int = await conn.fetchval(
                query("create_user"), email, full_name, deposit, enable, interval_s, strategy
            )
        await audit(
            conn,
            actor,
            "create_user",
            user_id,
            {
                "email": email,
                "full_name": full_name,
                "deposit": str(deposit),
                "sim_enabled": enable,
            },
        )
    return user_id


async def set_flags(
    conn: Conn,
    actor: str,
    action: str,
    user_id: int,
    *,
    enabled: bool | None = None,
    paused: bool | None = None,
    interval_s: int | None = None,
    strategy: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> AuditDetails:
    """enable, disable, pause, resume, set-interval, set-strategy."""
    if interval_s is not None:
        with refusing():
            check_interval(interval_s)
    if strategy is not None:
        _check_strategy(strategy, params or {})
    async with conn.transaction():
        before = await locked_user(conn, user_id)
        if before["deleted_at"] is not None:
            raise Refused(f"user {user_id} is deleted")
        await conn.execute(
            query("set_sim_flags"),
            user_id,
            enabled,
            paused,
            interval_s,
            strategy,
            None if params is None else dict(params),
        )
        return await audit_change(conn, actor, action, user_id, before)


async def soft_delete(conn: Conn, actor: str, user_id: int) -> AuditDetails:
    async with conn.transaction():
        before = await locked_user(conn, user_id)
        if before["deleted_at"] is not None:
            raise Refused(f"user {user_id} is already deleted")
        await conn.execute(query("soft_delete"), user_id)
        return await audit_change(conn, actor, "delete", user_id, before)


async def show_user(conn: Conn, user_id: int) -> dict[str, Any]:
    """The user's row with holdings, deposits, P&L (sim_pnl's), fees and the last runs."""
    async with conn.transaction(readonly=True):
        user = await conn.fetchrow(query("user_row"), user_id)
        if user is None:
            raise NotFound(f"no user with id {user_id}")
        held = await conn.fetchrow(query("holdings_row"), user_id)
        extra = await conn.fetchrow(query("user_overview"), user_id)
        pnl = await conn.fetchrow(query("user_pnl"), user_id)
    assert extra is not None
    data = dict(user.items())
    data["holdings"] = {a: (held[a.lower()] if held else Decimal(0)) for a in ASSETS}
    data["deposits_usd"] = extra["deposits_usd"]
    # P&L as sim_pnl defines it (one definition everywhere): value at the latest prices minus
    # net contributions. A deleted user has no row in sim_pnl.
    for column in ("holdings_value_usd", "equity_usd", "net_contributions_usd"):
        data[column] = None if pnl is None else pnl[column]
    data["pnl_usd"] = None if pnl is None else pnl["total_pnl_usd"]
    data["fees_usd"] = extra["fees_usd"]
    data["last_runs"] = extra["last_runs"]
    return data


async def list_users(
    conn: Conn,
    search: str | None,
    enabled: bool | None,
    paused: bool | None,
    include_deleted: bool,
    limit: int,
    offset: int,
) -> list[UserListing]:
    rows = await conn.fetch(
        query("list_users"), search, enabled, paused, include_deleted, limit, offset
    )
    return [cast(UserListing, dict(r.items())) for r in rows]


def ineligibility(row: Record) -> str | None:
    """Why a user is not eligible for simulation, or None if it is."""
    if row["deleted_at"] is not None:
        return "user is deleted"
    if not row["is_active"]:
        return "user is deactivated"
    if not row["sim_enabled"]:
        return "simulation is disabled for this user"
    if row["sim_paused"]:
        return "simulation is paused for this user"
    return None


async def make_due_now(conn: Conn, user_id: int) -> tuple[datetime, datetime | None]:
    """Make an eligible user's slot due now: (slot, the end of the user's live lease or None).
    Never sets or extends a lease (see the make_due_now query). Refused with the reason when
    the user is not eligible; nothing changes then."""
    async with conn.transaction():
        row = await conn.fetchrow(query("user_for_update"), user_id)
        if row is None:
            raise NotFound(f"no user with id {user_id}")
        reason = ineligibility(row)
        if reason is not None:
            raise Refused(f"user {user_id} not run: {reason}")
        row = await conn.fetchrow(query("make_due_now"), user_id)
    assert row is not None
    return row["sim_next_run_at"], row["lease_until"]


async def run_of_slot(conn: Conn, user_id: int, slot: datetime) -> dict[str, Any] | None:
    """The run of a user's slot with its trades (what `simctl run --wait` prints), or None."""
    row = await conn.fetchrow(query("run_of_slot"), user_id, slot)
    return None if row is None else dict(row.items())
