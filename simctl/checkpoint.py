"""simctl checkpoint: take and verify a checkpoint of the engine's history now."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from simctl.common import Exit, out, print_json, run_async, settings

if TYPE_CHECKING:
    from store.history import CheckpointReport


def checkpoint(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Take a checkpoint now and verify it: cut the engine's rows (trades, their ledger rows,
    runs) at the ids written so far, add each user's rows since the previous checkpoint to its
    totals, hash the window's rows into the chain, then check that every user's live balance
    and holdings equal the totals plus what was written since, and that the previous window's
    rows still give the hashes it stored.

    The scheduler takes one every SIM_CHECKPOINT_INTERVAL_S on its own; this is the same by
    hand. Exit 0 when verified; 1 naming what does not verify (a changed or deleted engine row
    with its table, id and checkpoint; a user whose state disagrees), or when another
    checkpoint or prune is running.

    Examples:

      simctl checkpoint

      simctl checkpoint --json
    """
    s = settings()

    async def go() -> CheckpointReport:
        from store.db import connection
        from store.history import checkpoint as take

        async with connection(s.history_database_url) as conn:
            return await take(
                conn, "simctl", slippage_bps=s.sim_slippage_bps, lease_s=s.sim_history_lease_s
            )

    report = run_async(go)
    if as_json:
        print_json(
            {
                "id": report.id,
                "state": report.state,
                "previous": report.prev_id,
                "cut": {
                    "trades": report.cut.trades,
                    "transactions": report.cut.transactions,
                    "sim_runs": report.cut.runs,
                    "at": report.cut.at,
                },
                "rows": report.rows,
                "chain_hash": report.chain_hash,
                "problems": report.problems,
                "seconds": round(report.seconds, 3),
                "longest_transaction_s": round(report.longest_tx_s, 3),
            }
        )
    else:
        for line in report.problems:
            out.print(line, markup=False)
        rows = ", ".join(f"{n} {t}" for t, n in report.rows.items())
        out.print(
            f"checkpoint {report.id} {report.state}: window of {rows} row(s) in "
            f"{report.seconds:.2f} s (longest transaction {report.longest_tx_s:.2f} s)",
            markup=False,
        )
        if report.chain_hash:
            out.print(f"chain {report.chain_hash}", markup=False)
    if report.state != "verified":
        raise Exit(1, f"checkpoint {report.id}: {len(report.problems)} problem(s) do not verify")
