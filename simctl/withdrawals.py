"""simctl withdrawals: request (reserves crypto), process, complete, fail, list."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from simctl.common import Exit, KeyOpt, admin_fingerprint, out, print_json, run_async, settings
from simctl.fmt import plain, print_table, utc
from store.db import connection

if TYPE_CHECKING:
    from store.withdrawals import WithdrawalRow

app = typer.Typer(
    help="Crypto withdrawals: pending → processing → completed | failed. A request reserves the "
    "crypto (the engine never sells it); completion removes it from the holding; failure releases it.",
    no_args_is_help=True,
)


@app.command(context_settings={"ignore_unknown_options": True})  # a negative amount: refused
def request(
    user: Annotated[str, typer.Argument(metavar="USER", help="User id or email.")],
    asset: Annotated[
        str, typer.Argument(metavar="ASSET", help="BTC, ETH, USDT, USDC, XRP or ADA.")
    ],
    amount: Annotated[
        str, typer.Argument(metavar="AMOUNT", help="Amount leaving the holding (the fee included).")
    ],
    address: Annotated[str, typer.Option("--address", help="Destination address.")],
    admin_key: KeyOpt = None,
) -> None:
    """Request a withdrawal and reserve its crypto.

    Example:

    \b
      simctl withdrawals request 42 BTC 0.01 --address bc1qexample
    """
    from engine.values import parse_amount, parse_asset, parse_text
    from store.users import resolve_user
    from store.withdrawals import request_withdrawal

    s = settings()
    actor = admin_fingerprint(s, admin_key)
    checked, value = parse_asset(asset), parse_amount(amount)
    if not address.strip():
        raise Exit(2, "--address must not be empty")
    parse_text(address, "--address", "address")

    async def go() -> int:
        async with connection(s.database_url) as conn:
            uid = await resolve_user(conn, user)
            return await request_withdrawal(conn, actor, uid, checked, value, address)

    print_json({"withdrawal_id": run_async(go), "status": "pending"})


def _step(
    step: str,
    withdrawal_id: int,
    key: Path | None,
    tx_hash: str | None = None,
    error: str | None = None,
) -> None:
    from engine.text import check_text
    from store.withdrawals import move_withdrawal

    if tx_hash is not None:
        check_text(tx_hash, "--tx-hash", "tx_hash")
    if error is not None:
        check_text(error, "--error", "reason")
    s = settings()
    actor = admin_fingerprint(s, key)

    async def go() -> dict[str, Any]:
        async with connection(s.database_url) as conn:
            return await move_withdrawal(conn, actor, withdrawal_id, step, tx_hash, error)

    print_json(run_async(go))


WidArg = Annotated[int, typer.Argument(metavar="WITHDRAWAL_ID", min=1, help="Withdrawal id.")]


@app.command()
def process(withdrawal_id: WidArg, admin_key: KeyOpt = None) -> None:
    """pending → processing.

    Example:

    \b
      simctl withdrawals process 7
    """
    _step("process", withdrawal_id, admin_key)


@app.command()
def complete(
    withdrawal_id: WidArg,
    tx_hash: Annotated[
        str | None, typer.Option("--tx-hash", help="On-chain transaction hash.")
    ] = None,
    admin_key: KeyOpt = None,
) -> None:
    """processing → completed: the crypto leaves the holding (fee from fee_config recorded).

    Example:

    \b
      simctl withdrawals complete 7 --tx-hash 0xabc
    """
    _step("complete", withdrawal_id, admin_key, tx_hash=tx_hash)


@app.command()
def fail(
    withdrawal_id: WidArg,
    error: Annotated[str, typer.Option("--error", help="Why it failed (stored as error_message).")],
    admin_key: KeyOpt = None,
) -> None:
    """pending|processing → failed: the reservation is released.

    Example:

    \b
      simctl withdrawals fail 7 --error "address rejected"
    """
    _step("fail", withdrawal_id, admin_key, error=error)


@app.command("list")
def list_(
    user: Annotated[
        str | None, typer.Option("--user", help="Only this user (id or email).")
    ] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="pending, processing, completed, failed.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List withdrawals, newest first.

    Examples:

    \b
      simctl withdrawals list --status pending
      simctl withdrawals list --user 42 --json
    """
    from engine.withdrawals import STATUSES
    from store.users import resolve_user
    from store.withdrawals import list_withdrawals

    if status is not None and status not in STATUSES:
        raise Exit(2, f"--status must be pending, processing, completed or failed, not {status!r}")
    s = settings()

    async def go() -> list[WithdrawalRow]:
        async with connection(s.database_url) as conn:
            uid = None if user is None else await resolve_user(conn, user)
            return await list_withdrawals(conn, uid, status, limit)

    rows = run_async(go)
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("no withdrawals match" if user or status else "no withdrawals", markup=False)
        return
    table = [("ID", "USER", "ASSET", "AMOUNT", "STATUS", "ADDRESS", "CREATED (UTC)", "TX_HASH")]
    table += [
        (
            str(r["id"]),
            str(r["user_id"]),
            r["asset"],
            plain(r["amount"]),
            r["status"],
            r["address"] or "-",
            utc(r["created_at"]),
            r["tx_hash"] or r["error_message"] or "-",
        )
        for r in rows
    ]
    print_table(table, right=(0, 1, 3))
