"""simctl reconcile: every balance, holding, trade price and value checked against the ledger."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer

from simctl.common import Exit, out, print_json, run_async, settings

if TYPE_CHECKING:
    from store.history import ReconcileReport
    from store.ledger import LegacyGap


def reconcile(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Walk every retained row from the beginning (or from the checkpoint retention "
            "pruned through), verifying each checkpoint's hashes and totals on the way.",
        ),
    ] = False,
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
    """Rebuild every balance and holding from the ledger and compare; check every engine trade's
    price against its tick's stored price moved by SIM_SLIPPAGE_BPS, exactly, and every
    portfolio value against the stored prices of the user's last run. Any run whose slot is
    later than its commit, any stored price of a tick later than now, and any engine row changed
    or deleted after it was written (table, id, and the checkpoint whose window holds it) is
    named too.

    Judged from the latest verified checkpoint (`simctl checkpoint`): its per-user totals plus
    the rows written since, and the prices of the trades since, so its cost follows the rows
    since the checkpoint, not the history. --full walks every retained row and verifies the
    checkpoint chain (each window's rows against its stored hashes, each checkpoint's totals).
    Either way the work is done a range of ids or users per short transaction, never one long
    snapshot. On an adopted database the ledger is judged from the adoption's baseline on
    (each user's opening balance and holdings). Exit 0 when clean, 1 with each discrepancy named
    (user, field, expected, found). --legacy never changes the exit code.

    Examples:

      simctl reconcile

      simctl reconcile --full --json

      simctl reconcile --legacy
    """
    s = settings()

    async def go() -> tuple[ReconcileReport, list[LegacyGap] | None]:
        from store.db import connection
        from store.history import reconcile as judge
        from store.ledger import legacy_gap, was_adopted
        from store.users import resolve_user

        async with connection(s.history_database_url) as conn:
            uid = None if user is None else await resolve_user(conn, user)
            report = await judge(conn, slippage_bps=s.sim_slippage_bps, full=full, user_id=uid)
            adopted = legacy and await was_adopted(conn)
            # None: never adopted, so no legacy ledger and no opening state to explain.
            gaps = await legacy_gap(conn, uid) if adopted else None
            return report, gaps

    report, gaps = run_async(go)
    found, early = report.discrepancies, report.findings
    if legacy:
        _print_legacy_gaps(gaps, as_json)
    if as_json:
        print_json(
            {
                "clean": report.clean,
                "full": report.full,
                "from_checkpoint": report.base,
                "checkpoints_verified": report.checkpoints_verified,
                "rows_since": report.rows_since,
                "seconds": round(report.seconds, 3),
                "longest_transaction_s": round(report.longest_tx_s, 3),
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
            out.print(str(d), markup=False)
        for line in early:
            out.print(line, markup=False)
        if report.clean:
            base = (
                f"from checkpoint {report.base}"
                if report.base is not None
                else "from the beginning"
            )
            walked = (
                f", {report.checkpoints_verified} checkpoint(s) verified" if report.full else ""
            )
            out.print(
                "clean: every balance and holding matches the ledger, every trade and value "
                f"its stored prices ({base}{walked}; {report.seconds:.2f} s, longest "
                f"transaction {report.longest_tx_s:.2f} s)",
                markup=False,
            )
    if not report.clean:
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
