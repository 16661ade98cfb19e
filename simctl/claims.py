"""simctl claims: the global switch of claims. While paused no scheduler leases anyone (queued
runs still apply); every user keeps its slot. Admin key required; audited."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from simctl.common import KeyOpt, admin_fingerprint, print_json, run_async, settings
from store.db import connection

app = typer.Typer(
    help="Pause or resume every claim (the scheduler's leases), or show the switch.\n\n"
    "A change needs an admin key (SIM_ADMIN_KEY or --admin-key-file PATH) and is audited.",
    no_args_is_help=True,
)
Reason = Annotated[str, typer.Option("--reason", help="Why (audited; at most 500 characters).")]


def _set(paused: bool, reason: str, key: Any) -> None:
    from store.control import set_claims_paused

    s = settings()
    actor = admin_fingerprint(s, key)

    async def go() -> dict[str, Any]:
        async with connection(s.database_url) as conn:
            return await set_claims_paused(conn, actor, paused, reason)

    print_json(run_async(go))


@app.command()
def pause(reason: Reason = "", admin_key: KeyOpt = None) -> None:
    """Stop every scheduler from leasing users (runs already queued still apply).

    Example:

    \b
      simctl claims pause --reason "database maintenance"
    """
    _set(True, reason, admin_key)


@app.command()
def resume(reason: Reason = "", admin_key: KeyOpt = None) -> None:
    """Let the schedulers lease due users again (from their next pass).

    Example:

    \b
      simctl claims resume
    """
    _set(False, reason, admin_key)


@app.command()
def show() -> None:
    """Whether claims are paused, since when, by whom (a key fingerprint) and why."""
    from store.control import claims_state

    s = settings()

    async def go() -> dict[str, Any]:
        async with connection(s.database_url) as conn:
            return await claims_state(conn)

    print_json(run_async(go))
