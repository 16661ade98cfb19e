"""simctl grant-reader: a new login role that reads the read views and nothing else."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from simctl.common import Exit, KeyOpt, admin_fingerprint, err, out, print_json, run_async, settings
from store.db import connection
from store.errors import Refused
from store.roles import check_role_name, refusal, role_state, scram_verifier
from store.roles import grant_reader as do_grant


def grant_reader(
    role: Annotated[
        str,
        typer.Argument(metavar="ROLE", help="Role name: lower-case letters, digits, underscores."),
    ],
    adopt_existing_role: Annotated[
        bool,
        typer.Option(
            "--adopt-existing-role",
            help="Also grant the read views to a role that already exists and is not a reader "
            "made here. Only grants: nothing is revoked and no attribute (SUPERUSER, CREATEDB, "
            "...) or password of that role changes, so it keeps whatever else it could do.",
        ),
    ] = False,
    no_password: Annotated[
        bool,
        typer.Option(
            "--no-password",
            help="Create the role without a password (for certificate or peer authentication).",
        ),
    ] = False,
    password: Annotated[
        str | None, typer.Option("--password", hidden=True, help="Refused: see below.")
    ] = None,
) -> None:
    """Create a new login role that can read the read views (docs/read-side.md) and nothing
    else: no table, so no password_hash or tax_id.

    The password comes from SIM_READER_PASSWORD, or else a hidden prompt (asked twice) on a
    terminal; never from the command line. It is sent as a SCRAM-SHA-256 verifier, so the
    password itself never reaches the server. A role that already exists is refused (exit 1,
    nothing changed) unless it is a reader made by this command (then its grants are renewed, and
    its password changed if SIM_READER_PASSWORD is set) or --adopt-existing-role is given.

    Example (it prompts; or set SIM_READER_PASSWORD first):

    \b
      simctl grant-reader analytics
    """
    if password is not None:
        raise Exit(
            2,
            "grant-reader: a password on the command line ends up in shell history and ps; "
            "set SIM_READER_PASSWORD or answer the prompt",
        )
    s = settings()
    try:
        check_role_name(role)
    except Refused as exc:
        raise Exit(1, str(exc)) from None

    async def inspect() -> Any:
        async with connection(s.database_url) as conn:
            return await role_state(conn, role)

    state = run_async(inspect)
    if state.exists and not state.is_reader and not adopt_existing_role:
        raise Exit(1, refusal(role, state))
    secret = os.environ.get("SIM_READER_PASSWORD")
    if state.exists and not state.is_reader:
        secret = None  # adopting: its password is not ours to change
    elif secret is None and not state.exists and not no_password:
        if not sys.stdin.isatty():
            raise Exit(
                2,
                "grant-reader: a new role needs a password: set SIM_READER_PASSWORD or run on a "
                "terminal (or --no-password)",
            )
        secret = typer.prompt(f"Password for {role}", hide_input=True, confirmation_prompt=True)
    try:
        verifier = scram_verifier(secret) if secret is not None else None
    except Refused as exc:
        raise Exit(2, f"grant-reader: {exc}") from None

    async def go() -> Any:
        async with connection(s.database_url) as conn:
            return await do_grant(conn, role, verifier=verifier, adopt_existing=adopt_existing_role)

    report = run_async(go)
    password_note = ", password set" if report.password_set else ""
    out.print(f"role {role} {report.action}{password_note}; can read: {', '.join(report.views)}")
    if report.kept:
        err.print(f"grant-reader: role {role} keeps: {'; '.join(report.kept)}", markup=False)


def drop_reader(
    role: Annotated[str, typer.Argument(metavar="ROLE", help="A reader made by grant-reader.")],
    admin_key: KeyOpt = None,
) -> None:
    """Drop a reader role made by `simctl grant-reader`: its read-view grants, its CONNECT and
    the role itself, audited (admin key required). Any other role is refused, nothing changed.

    Example:

    \b
      simctl drop-reader analytics
    """
    from store.roles import drop_reader as do_drop

    s = settings()
    actor = admin_fingerprint(s, admin_key)

    async def go() -> dict[str, Any]:
        async with connection(s.database_url) as conn:
            return await do_drop(conn, actor, role)

    print_json(run_async(go))
