"""simctl prune: retention of the engine's history (store/retention.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from simctl.common import Exit, KeyOpt, admin_fingerprint, err, out, print_json, run_async, settings

if TYPE_CHECKING:
    from store.retention import Plan, PruneReport


def prune(
    keep_days: Annotated[
        int,
        typer.Option(
            "--keep-days",
            min=0,
            max=36_500,
            help="Keep this many days of the engine's history (0: everything a verified "
            "checkpoint covers may go).",
            show_default=False,
        ),
    ],
    archive: Annotated[
        Path | None,
        typer.Option(
            "--archive",
            help="First write every row it deletes to this folder: one gzip file per table and "
            "day, and manifest.json (rows, SHA-256, the checkpoints the rows belong to). Use "
            "the same folder for every prune of a period; check it with `simctl archive verify`.",
            file_okay=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Say what would go and the space it frees; change nothing."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    admin_key: KeyOpt = None,
) -> None:
    """Delete the engine's history older than --keep-days days that a verified checkpoint
    stands for: the engine's trades and ledger rows (sim_run_id set) and its runs, never a legacy
    row or one of the platform's own, never a user's latest run, never a withdrawal or a price.
    The views (balances, holdings, P&L) read the checkpoint's per-user totals for what is gone,
    so they do not change.

    P, the checkpoint pruned through, is the newest verified one cut at least N days ago.
    Refused (exit 1, naming why) when there is none, when an open withdrawal is older than the
    window, or when another prune or checkpoint holds the history lease (named, with until
    when). An admin act (key needed, audited as 'prune'); --dry-run needs no key.

    Runs go a UTC day at a time where they can: a day that is over and whose runs are all
    covered is dropped as a partition (each user's latest run in it kept). The rest go in
    batches by primary-key range, each its own transaction, for at most
    SIM_PRUNE_MAX_S (then it stops; the next prune goes on). Each batch is sized to a time
    budget, SIM_PRUNE_BATCH_MS (250): the next batch's rows grow or shrink by how long the last
    one's transaction was open, from 10 up to SIM_PRUNE_BATCH (5000). After a batch that worked
    t, the prune pauses t x (1 - SIM_PRUNE_DUTY) / SIM_PRUNE_DUTY (duty 0.1: 9 t), at least
    SIM_PRUNE_PAUSE_MS (50): it works at most that share of the time, so the engine keeps its
    pace; at duty d it deletes about d / (seconds per row) rows a second (docs/operations.md,
    "Pace"). With --archive, a batch's rows are read and written to the archive before its
    delete's transaction opens. A prune killed at any point leaves the views exact; run it
    again to finish. --json reports the batches, their rows, the longest batch's and the
    longest transaction's seconds, and the seconds worked and paused.

    Examples:

    \b
      simctl prune --keep-days 30 --dry-run
      simctl prune --keep-days 30 --archive /srv/simengine-archive/2026-11 --admin-key-file ~/.simengine/admin.key
      simctl prune --keep-days 7 --json
    """
    from store.db import connection
    from store.retention import Limits
    from store.retention import plan as make_plan
    from store.retention import prune as do_prune

    s = settings()
    if dry_run:

        async def look() -> Plan:
            async with connection(s.history_database_url) as conn:
                return await make_plan(conn, keep_days)

        the_plan = run_async(look)
        _show_plan(the_plan, as_json)
        if the_plan.refusals:
            raise Exit(1, "prune refused: " + "; ".join(the_plan.refusals))
        return

    actor = admin_fingerprint(s, admin_key)
    limits = Limits(
        batch=s.sim_prune_batch,
        pause_ms=s.sim_prune_pause_ms,
        max_s=s.sim_prune_max_s,
        lease_s=s.sim_history_lease_s,
        batch_ms=s.sim_prune_batch_ms,
        duty=s.sim_prune_duty,
    )

    async def go() -> PruneReport:
        async with connection(s.history_database_url) as conn:
            return await do_prune(conn, keep_days, actor=actor, limits=limits, archive_dir=archive)

    report = run_async(go)
    if as_json:
        print_json(report.as_dict())
        return
    rows = ", ".join(f"{n:,} {t}" for t, n in report.rows.items())
    cp = report.plan.checkpoint
    out.print(f"pruned through checkpoint {cp.id if cp else '-'}: removed {rows}", markup=False)
    out.print(
        f"{report.batches:,} batch(es) of {report.batch_rows_min:,}-{report.batch_rows_max:,} "
        f"rows, the longest held {report.longest_batch_s:.3f} s (longest transaction "
        f"{report.timer.longest_s:.3f} s); worked {report.working_s:.1f} s, paused "
        f"{report.paused_s:.1f} s, {report.seconds:.1f} s in all",
        markup=False,
    )
    if report.drops.dropped:
        out.print(
            f"dropped {len(report.drops.dropped)} day(s) of runs whole "
            f"({', '.join(report.drops.dropped)}); {report.drops.kept} latest run(s) kept",
            markup=False,
        )
    if report.archive_sha256:
        out.print(f"archive {archive}: manifest sha256 {report.archive_sha256}", markup=False)
    if not report.complete:
        err.print(
            f"stopped at SIM_PRUNE_MAX_S ({s.sim_prune_max_s} s) with rows left; the views are "
            "exact; run prune again to go on",
            markup=False,
        )


def _show_plan(p: Plan, as_json: bool) -> None:
    if as_json:
        print_json({"dry_run": True, **p.as_dict()})
        return
    cp = p.checkpoint
    out.print(
        f"window: keep {p.keep_days} day(s), from {p.cutoff.isoformat()}; checkpoint P: "
        + ("none" if cp is None else f"{cp.id} (cut at {cp.cut_at.isoformat()})"),
        markup=False,
    )
    for t in p.tables:
        out.print(f"  {t.table}: {t.rows:,} row(s) would go, about {_size(t.bytes)}", markup=False)
    out.print(
        f"  total: about {_size(p.bytes)} freed for reuse (the files shrink only after "
        "VACUUM FULL or a repack)",
        markup=False,
    )
    if p.lease_holder is not None and p.lease_until is not None:
        out.print(
            f"  the history lease is held by {p.lease_holder} until {p.lease_until.isoformat()}",
            markup=False,
        )
    for reason in p.refusals:
        out.print(f"  refused: {reason}", markup=False)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
