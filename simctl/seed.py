"""simctl seed-demo: demo users with a deposit each, in one transaction."""

from __future__ import annotations

from typing import Annotated

import typer

from simctl.common import KeyOpt, admin_fingerprint, err, out, run_async, settings


def seed_demo(
    users: Annotated[
        int, typer.Option("--users", min=1, max=10_000_000, help="How many demo users.")
    ],
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seed of the generated names and deposits.")
    ] = 1,
    interval_s: Annotated[
        int,
        typer.Option(
            "--interval-s",
            min=1,
            max=2_147_483_647,
            help="Their sim_interval_s; first slots spread over it.",
        ),
    ] = 300,
    add_to_existing: Annotated[
        bool,
        typer.Option(
            "--add-to-existing",
            help="Add demo users to a database holding users seed-demo did not create (an "
            "adopted one included): needs an admin key, and is audited.",
        ),
    ] = False,
    admin_key: KeyOpt = None,
) -> None:
    """Create N demo users with a deposit, a portfolio row and simulation on.

    Each user's balance is explained by one completed deposit transaction; first slots are spread
    over the next interval so the load is smooth. All users are created in one transaction.
    Their addresses are on example.com, and each is recorded as a demo user.

    For demo databases only: a database holding any user seed-demo did not create, or one
    adopted from the platform, is refused (exit 1) unless --add-to-existing is given with an
    admin key (SIM_ADMIN_KEY or --admin-key-file PATH); then one admin_audit row (seed_demo,
    with the count and the seed) records the run.

    Example:

    \b
      simctl seed-demo --users 10000 --seed 7
    """
    s = settings()
    actor = admin_fingerprint(s, admin_key) if add_to_existing else None

    async def go() -> int:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        from store.db import connection
        from store.seed import seed_demo as do_seed

        async with connection(s.database_url) as conn:
            with Progress(
                TextColumn("seeding"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
                console=err.get(),
                transient=True,
            ) as progress:
                task = progress.add_task("seed", total=users)
                return await do_seed(
                    conn,
                    users,
                    seed,
                    interval_s,
                    lambda n: progress.advance(task, n),
                    demo_only=not add_to_existing,
                    actor=actor,
                )

    created = run_async(go)
    out.print(f"created {created} demo user(s)")
