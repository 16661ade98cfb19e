"""Operator changes: each runs in one transaction with its admin_audit row (before/after)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg

from engine.accounting import mark_to_market
from engine.assets import ASSETS, check_asset
from engine.errors import UnknownStrategy
from engine.strategies import make_strategy
from store.db import Conn
from store.errors import NotFound, Refused
from store.runs import audit
from store.sqlfiles import query

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
MAX_USD = Decimal("100000000000")  # numeric(20,8) holds < 1e12
MAX_INTERVAL_S = 2_147_483_647  # users.sim_interval_s is an integer (int32)


def check_interval(interval_s: int) -> None:
    """Refused unless 1 <= interval_s <= MAX_INTERVAL_S (what the column can hold)."""
    if not 1 <= interval_s <= MAX_INTERVAL_S:
        raise Refused(f"interval must be 1..{MAX_INTERVAL_S} seconds, got {interval_s}")


def parse_amount(text: str, what: str = "amount", *, signed: bool = False) -> Decimal:
    """A money amount from text: finite, at most 8 decimals, positive unless `signed`."""
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        raise Refused(f"{what} must be a number, got {text!r}") from None
    if not value.is_finite():
        raise Refused(f"{what} must be a finite number, got {text!r}")
    if abs(value) >= MAX_USD or value != value.quantize(Decimal("0.00000001")):
        raise Refused(f"{what} must have at most 8 decimals and be below {MAX_USD}")
    if value == 0 or (value < 0 and not signed):
        raise Refused(f"{what} must be {'non-zero' if signed else 'positive'}, got {text}")
    return value


def parse_email(text: str) -> str:
    email = text.strip().lower()
    if len(email) > 254 or not EMAIL.match(email):
        raise Refused(f"not a valid email address: {text!r}")
    return email


def parse_asset(text: str) -> str:
    try:
        return check_asset(text)
    except ValueError as exc:
        raise Refused(str(exc)) from None


def _snapshot(row: asyncpg.Record) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in row.items()}


async def _locked_user(conn: Conn, user_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(query("user_snapshot"), user_id)
    if row is None:
        raise NotFound(f"no user with id {user_id}")
    return row


async def _changed(
    conn: Conn, actor: str, action: str, user_id: int, before: asyncpg.Record, **extra: Any
) -> dict[str, Any]:
    """Audit a change of a user row: the columns that changed, before and after."""
    row = await conn.fetchrow(query("user_snapshot"), user_id)
    assert row is not None
    old, new = _snapshot(before), _snapshot(row)
    changes = {k: {"before": old[k], "after": v} for k, v in new.items() if old[k] != v}
    # Round-trip through JSON so the caller sees exactly what the audit row holds.
    details: dict[str, Any] = json.loads(json.dumps({"changes": changes, **extra}, default=str))
    await audit(conn, actor, action, user_id, details)
    return details


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
    email = parse_email(email)
    check_interval(interval_s)
    if strategy is not None:
        _check_strategy(strategy, {})
    async with conn.transaction():
        try:
            user_id: int = await conn.fetchval(
                query("create_user"), email, full_name, deposit, enable, interval_s, strategy
            )
        except asyncpg.UniqueViolationError:
            raise Refused(f"a user with email {email} already exists") from None
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


def _check_strategy(name: str, params: Mapping[str, Any]) -> None:
    try:
        make_strategy(name, params)
    except UnknownStrategy as exc:
        raise Refused(str(exc)) from None


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
) -> dict[str, Any]:
    """enable, disable, pause, resume, set-interval, set-strategy."""
    if interval_s is not None:
        check_interval(interval_s)
    if strategy is not None:
        _check_strategy(strategy, params or {})
    async with conn.transaction():
        before = await _locked_user(conn, user_id)
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
        return await _changed(conn, actor, action, user_id, before)


async def move_usd(
    conn: Conn, actor: str, user_id: int, amount: Decimal, kind: str, reason: str | None
) -> dict[str, Any]:
    """A deposit (positive) or an adjustment (signed, with a reason), ledger row and balance."""
    async with conn.transaction():
        before = await _locked_user(conn, user_id)
        _refuse_closed(before, kind)
        if before["balance_usd"] + amount < 0:
            raise Refused(
                f"user {user_id}: balance {before['balance_usd']} cannot go below 0 by {amount}"
            )
        row = await conn.fetchrow(
            query("move_usd"), user_id, kind, amount, f"simctl:{actor}", reason or kind
        )
        assert row is not None
        return await _changed(
            conn,
            actor,
            kind,
            user_id,
            before,
            amount=str(amount),
            reason=reason,
            transaction_id=row["transaction_id"],
        )


async def adjust_holding(
    conn: Conn, actor: str, user_id: int, asset: str, delta: Decimal, reason: str
) -> dict[str, Any]:
    """An audited change of one holding; reconcile explains holdings by these rows."""
    async with conn.transaction():
        _refuse_closed(await _locked_user(conn, user_id), "adjustment")
        held = await conn.fetchrow(query("holdings_for_update"), user_id)
        if held is None:
            await conn.execute(query("ensure_portfolios"), [user_id])
            held = await conn.fetchrow(query("holdings_for_update"), user_id)
        assert held is not None
        reserved: Decimal = await conn.fetchval(query("reserved_of_user"), user_id, asset)
        current: Decimal = held[asset.lower()]
        if current + delta < reserved:
            raise Refused(
                f"user {user_id}: {asset} holding {current} cannot go below its reserved {reserved}"
            )
        after = await conn.fetchrow(query("change_holding"), user_id, asset, delta)
        assert after is not None
        await _revalue(conn, user_id, after)
        details = {
            "asset": asset,
            "delta": str(delta),
            "reason": reason,
            "before": str(current),
            "after": str(after[asset.lower()]),
            **await _flow_value(conn, asset, delta),
        }
        await audit(conn, actor, "adjust_holding", user_id, details)
        return details


def _refuse_closed(user: asyncpg.Record, what: str) -> None:
    """Money never moves into (or out of) a deleted or deactivated account."""
    if user["deleted_at"] is not None:
        raise Refused(f"user {user['id']} is deleted: no {what}")
    if not user["is_active"]:
        raise Refused(f"user {user['id']} is deactivated: no {what}")


async def _flow_value(conn: Conn, asset: str, quantity: Decimal) -> dict[str, str | None]:
    """A crypto flow's price and value when it happens (the latest stored price), recorded in
    its audit row: P&L counts the flow as a contribution at this value, never as a gain."""
    price: Decimal | None = await conn.fetchval(query("latest_price"), asset)
    return {
        "price_usd": None if price is None else str(price),
        "value_usd": None if price is None else str(quantity * price),
    }


async def _revalue(conn: Conn, user_id: int, held: asyncpg.Record) -> None:
    """Keep portfolio.usd_value (= users.portfolio_value_usd) equal to the holdings × the prices
    of the user's last run, after a change of holdings between runs."""
    rows = await conn.fetch(query("prices_at_last_slot"), user_id)
    prices = {r["asset"]: r["price_usd"] for r in rows}
    holdings = {a: held[a.lower()] for a in ASSETS}
    if any(holdings[a] and prices[a] is None for a in ASSETS):
        return  # no stored price yet for a held asset: the next run values it
    value = mark_to_market(holdings, {a: p or Decimal(0) for a, p in prices.items()})
    await conn.execute(query("set_value"), user_id, value)


async def soft_delete(conn: Conn, actor: str, user_id: int) -> dict[str, Any]:
    async with conn.transaction():
        before = await _locked_user(conn, user_id)
        if before["deleted_at"] is not None:
            raise Refused(f"user {user_id} is already deleted")
        await conn.execute(query("soft_delete"), user_id)
        return await _changed(conn, actor, "delete", user_id, before)


async def show_user(conn: Conn, user_id: int) -> dict[str, Any]:
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
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        query("list_users"), search, enabled, paused, include_deleted, limit, offset
    )
    return [dict(r.items()) for r in rows]


# -- withdrawals ------------------------------------------------------------------------------
_NEXT = {"process": ("pending",), "complete": ("processing",), "fail": ("pending", "processing")}
_TO = {"process": "processing", "complete": "completed", "fail": "failed"}


async def request_withdrawal(
    conn: Conn, actor: str, user_id: int, asset: str, amount: Decimal, address: str
) -> int:
    """Reserve `amount` of an asset (the engine never sells it) for a withdrawal."""
    async with conn.transaction():
        user = await _locked_user(conn, user_id)
        if user["deleted_at"] is not None:
            raise Refused(f"user {user_id} is deleted")
        fee: Decimal = await conn.fetchval(
            "SELECT withdrawal_fee FROM fee_config WHERE asset = $1", asset
        )
        if amount <= fee:
            raise Refused(f"amount {amount:f} {asset} does not cover the withdrawal fee {fee:f}")
        held = await conn.fetchrow(query("holdings_for_update"), user_id)
        holding = held[asset.lower()] if held else Decimal(0)
        reserved: Decimal = await conn.fetchval(query("reserved_of_user"), user_id, asset)
        if holding - reserved < amount:
            raise Refused(
                f"user {user_id} has {holding - reserved:f} {asset} available "
                f"({holding:f} held, {reserved:f} reserved), not {amount:f}"
            )
        wid: int = await conn.fetchval(query("insert_withdrawal"), user_id, asset, amount, address)
        await audit(
            conn,
            actor,
            "withdrawal_request",
            user_id,
            {
                "withdrawal_id": wid,
                "asset": asset,
                "amount": str(amount),
                "address": address,
                "fee": str(fee),
            },
        )
        return wid


async def move_withdrawal(
    conn: Conn,
    actor: str,
    withdrawal_id: int,
    step: str,
    tx_hash: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """process (pending→processing), complete (processing→completed, removes the crypto),
    fail (pending|processing→failed, releases the reservation). Any other move is refused."""
    async with conn.transaction():
        w = await conn.fetchrow(query("withdrawal_for_update"), withdrawal_id)
        if w is None:
            raise NotFound(f"no withdrawal with id {withdrawal_id}")
        await _locked_user(conn, w["user_id"])  # same lock order as the workers: user first
        w = await conn.fetchrow(query("withdrawal_for_update"), withdrawal_id)
        assert w is not None
        if w["status"] not in _NEXT[step]:
            raise Refused(
                f"withdrawal {withdrawal_id} is {w['status']}: cannot {step} "
                f"(allowed from {' or '.join(_NEXT[step])})"
            )
        details: dict[str, Any] = {
            "withdrawal_id": withdrawal_id,
            "from": w["status"],
            "to": _TO[step],
            "asset": w["asset"],
            "amount": str(w["amount"]),
        }
        if step == "complete":
            fee: Decimal = await conn.fetchval(
                "SELECT withdrawal_fee FROM fee_config WHERE asset = $1", w["asset"]
            )
            try:
                held = await conn.fetchrow(
                    query("change_holding"), w["user_id"], w["asset"], -w["amount"]
                )
            except asyncpg.CheckViolationError:
                raise Refused(
                    f"withdrawal {withdrawal_id}: the holding no longer covers it"
                ) from None
            assert held is not None
            await _revalue(conn, w["user_id"], held)
            details.update(fee=str(fee), net_sent=str(w["amount"] - fee), tx_hash=tx_hash)
            details.update(await _flow_value(conn, w["asset"], -w["amount"]))
        if step == "fail":
            details["error_message"] = error
        await conn.execute(query("set_withdrawal_status"), withdrawal_id, _TO[step], tx_hash, error)
        await audit(conn, actor, f"withdrawal_{step}", w["user_id"], details)
        return details


async def list_withdrawals(
    conn: Conn, user_id: int | None, status: str | None, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.fetch(query("list_withdrawals"), user_id, status, limit)
    return [dict(r.items()) for r in rows]
