"""simctl reconcile: every balance, holding, trade price and value checked against the ledger."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer

from simctl.common import Exit, out, print_json, run_async, settings

if TYPE_CHECKING:
    from store.ledger import Discrepancy, LegacyGap


def reconcile(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    user: Annotated[
        str | None, typer.Option("--user", help="Only this user (id or email); refused if unknown.")
    ] = None,
    legacy: Annotated[
        bool,
        typer.Option(
            "--legacy",
            help="Also report, as information, how far an adopted database's legacy ledger was "
            "from explaining each user's opening balance and holdings.",
        ),
    ] = False,
) -> None:
    """Rebuild every balance and holding from the ledger rows and compare; check every engine
    trade's price against its tick's stored price moved by SIM_SLIPPAGE_BPS, exactly, and every
    portfolio value against the stored prices of the user's last run. Any run whose slot is
    later than its commit, and any stored price of a tick later than now, is named too.

    On an adopted database the ledger is judged from the adoption's baseline on (each user's
    opening balance and holdings). Exit 0 when clean, 1 with each discrepancy named (user,
    field, expected, found). --legacy never changes the exit code.

    Examples:

      simctl reconcile --json

      simctl reconcile --legacy
    """
    s = settings()

    async def go() -> tuple[list[Discrepancy], list[str], list[LegacyGap] | None]:
        from store.audit import audit_time
        from store.db import connection
        from store.ledger import legacy_gap, was_adopted
        from store.ledger import reconcile as do_reconcile
        from store.prices import audit_prices
        from store.users import resolve_user

        async with connection(s.database_url) as conn:
            uid = None if user is None else await resolve_user(conn, user)
            found = await do_reconcile(conn, uid)
            found += await audit_prices(conn, s.sim_slippage_bps, uid)
            early = await audit_time(conn, uid)
            adopted = legacy and await was_adopted(conn)
            # None: never adopted, so no legacy ledger and no opening state to explain.
            gaps = await legacy_gap(conn, uid) if adopted else None
            return found, early, gaps

    found, early, gaps = run_async(go)
    if legacy:
        _print_legacy_gaps(gaps, as_json)
    if as_json:
        print_json(
            {
                "clean": not found and not early,
                "discrepancies": [
                    {
                        "user_id": d.user_id,
                        "field": d.field,
                        "expected": d.expected,
                        "found": d.found,
                    }
                    for d in found
                ],
                "ahead_of_time": early,
            }
        )
    else:
        for d in found:
            out.print(str(d))
        for line in early:
            out.print(line, markup=False)
        if not found and not early:
            out.print(
                "clean: every balance and holding matches the ledger, every trade and value "
                "its stored prices"
            )
    if found or early:
        raise Exit(1, f"reconcile: {len(found) + len(early)} discrepancy(ies)")


def _print_legacy_gaps(gaps: list[LegacyGap] | None, as_json: bool) -> None:
    if as_json:
        print_json(
            {"adopted": gaps is not None, "legacy_unexplained": [asdict(g) for g in gaps or []]}
        )
        return
    if gaps is None:
        out.print("legacy: this database was never adopted: no legacy ledger to compare")
        return
    if not gaps:
        out.print("legacy: the legacy ledger explains every adopted user's opening state")
        return
    for g in gaps:
        parts = [f"{k} {v}" for k, v in g.gaps.items()]
        if g.value_unequal:
            parts.append("portfolio value unequal")
        out.print(f"legacy: user {g.user_id}: opening not explained by: {', '.join(parts)}")
    out.print(
        f"legacy: {len(gaps)} adopted user(s) whose opening state the legacy ledger does not "
        "explain (information: reconcile judges from the baseline)"
    )
