"""Crypto withdrawals in the database: a request reserves the crypto, each step moves the row
along engine.withdrawals' states in one transaction with its admin_audit row."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TypedDict, cast

from engine.withdrawals import next_status
from store.db import Conn, refused_on
from store.errors import NotFound, Refused, refusing
from store.moves import flow_value, revalue
from store.runs import audit
from store.sqlfiles import query
from store.users import AuditDetails, locked_user


class WithdrawalRow(TypedDict):
    """A row of `withdrawals list`."""

    id: int
    user_id: int
    asset: str
    amount: Decimal
    address: str | None
    status: str
    tx_hash: str | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime | None


async def _fee(conn: Conn, asset: str) -> Decimal:
    fee: Decimal = await conn.fetchval(query("withdrawal_fee"), asset)
    return fee


async def request_withdrawal(
    conn: Conn, actor: str, user_id: int, asset: str, amount: Decimal, address: str
) -> int:
    """Reserve `amount` of an asset (the engine never sells it) for a withdrawal."""
    async with conn.transaction():
        user = await locked_user(conn, user_id)
        if user["deleted_at"] is not None:
            raise Refused(f"user {user_id} is deleted")
        fee = await _fee(conn, asset)
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
                "amount": f"{amount:f}",
                "address": address,
                "fee": f"{fee:f}",
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
) -> AuditDetails:
    """process (pending→processing), complete (processing→completed, removes the crypto),
    fail (pending|processing→failed, releases the reservation). Any other move is refused."""
    async with conn.transaction():
        w = await conn.fetchrow(query("withdrawal_for_update"), withdrawal_id)
        if w is None:
            raise NotFound(f"no withdrawal with id {withdrawal_id}")
        await locked_user(conn, w["user_id"])  # same lock order as the workers: user first
        w = await conn.fetchrow(query("withdrawal_for_update"), withdrawal_id)
        assert w is not None
        with refusing():
            to = next_status(withdrawal_id, w["status"], step)
        details: AuditDetails = {
            "withdrawal_id": withdrawal_id,
            "from": w["status"],
            "to": to,
            "asset": w["asset"],
            "amount": f"{w['amount']:f}",
        }
        if step == "complete":
            fee = await _fee(conn, w["asset"])
            with refused_on(
                "check", f"withdrawal {withdrawal_id}: the holding no longer covers it"
            ):
                held = await conn.fetchrow(
                    query("change_holding"), w["user_id"], w["asset"], -w["amount"]
                )
            assert held is not None
            await revalue(conn, w["user_id"], held)
            details.update(fee=f"{fee:f}", net_sent=f"{w['amount'] - fee:f}", tx_hash=tx_hash)
            details.update(await flow_value(conn, w["asset"], -w["amount"]))
        if step == "fail":
            details["error_message"] = error
        await conn.execute(query("set_withdrawal_status"), withdrawal_id, to, tx_hash, error)
        await audit(conn, actor, f"withdrawal_{step}", w["user_id"], details)
        return details


async def list_withdrawals(
    conn: Conn, user_id: int | None, status: str | None, limit: int
) -> list[WithdrawalRow]:
    rows = await conn.fetch(query("list_withdrawals"), user_id, status, limit)
    return [cast(WithdrawalRow, dict(r.items())) for r in rows]
