"""simctl migrate: apply the schema's migrations, or adopt a platform's existing tables."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from simctl.common import out, run_async, settings


def migrate(
    plan: Annotated[
        bool,
        typer.Option(
            "--plan",
            help="Print the statements it would run and the legacy rows it would report; change nothing.",
        ),
    ] = False,
) -> None:
    """Apply pending migrations; running it again changes nothing.

    On a database that already holds the platform's tables (restored from its backup) it adopts
    them: checks every column the engine uses (refuses an incompatible one, exit 1, nothing
    changed), adds only what is missing, never rewrites a legacy row, records each user's opening
    balance and holdings as the ledger's baseline, builds indexes CONCURRENTLY and reports legacy
    rows that break a rule it adds. Every statement waits at most SIM_MIGRATE_LOCK_TIMEOUT_MS for
    a lock and is tried SIM_MIGRATE_ATTEMPTS times. Refuses (exit 1) when an applied migration's
    file has changed since. The first migrate stores
    the market definition (SIM_SEED and the market settings when set, else the defaults and a
    random seed); later, a market setting that differs from it exits 2.

    Examples:

      simctl migrate --plan

      simctl migrate
    """
    s = settings()

    async def go() -> Any:
        from store.db import connection
        from store.market import ensure_market
        from store.migrate import LockPolicy
        from store.migrate import migrate as do_migrate

        policy = LockPolicy(s.sim_migrate_lock_timeout_ms, s.sim_migrate_attempts)
        async with connection(s.database_url) as conn:
            report = await do_migrate(conn, policy=policy, plan_only=plan)
            stored = False
            if not plan:
                _, stored = await ensure_market(conn, s)
            return report, stored

    report, stored = run_async(go)
    if plan:
        for note in report.notes:
            out.print(f"-- {note}", markup=False)
        for statement in report.plan:
            out.print(statement, markup=False)
        for rows in report.legacy:
            out.print(f"-- {rows}", markup=False)
        out.print(
            f"-- plan: {len(report.applied)} migration(s) to apply; nothing was changed",
            markup=False,
        )
        return
    if report.adopted_users is not None:
        out.print(
            f"adopted the platform's tables: baseline of {report.adopted_users} user(s); "
            f"locks that hold back writes to users were held for {report.users_lock_ms:.0f} ms"
        )
    for rows in report.legacy:
        out.print(str(rows), markup=False)
    for note in report.notes:
        out.print(note, markup=False)
    if stored:
        out.print("stored the market definition (simctl market show)")
    if report.applied:
        out.print(f"applied {len(report.applied)} migration(s): {', '.join(report.applied)}")
    else:
        out.print(f"up to date ({len(report.already)} migration(s) applied)")
