"""simctl console: the operators' web console (the `console` extra: Starlette, Jinja2, uvicorn)."""

from __future__ import annotations

from typing import Annotated

import typer

from simctl.common import Exit, err, run_async, settings


def console(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to bind. The default serves this machine only; another address "
            "serves whoever can reach it (put it behind your own authentication).",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8377,
    refresh: Annotated[
        float,
        typer.Option(
            "--refresh",
            min=0.5,
            max=3600,
            help="Seconds between the overview's updates (each page can change it, or pause).",
        ),
    ] = 5.0,
    enable_actions: Annotated[
        bool,
        typer.Option(
            "--enable-actions",
            help="Allow actions (pause, resume or set the strategy of the users a filter matches, "
            "pause claims, move withdrawals, drop reader roles). Without it every "
            "write is refused and Postgres reads through read-only transactions. Each action "
            "still needs an admin key and is audited.",
        ),
    ] = False,
) -> None:
    """Serve the web console: overview (live), users (search, filters), a user's P&L chart and
    rows, failing users and why, withdrawals, reader roles, the audit log; actions when enabled.

    Examples:

    \b
      simctl console                      # http://127.0.0.1:8377, read-only
      simctl console --enable-actions --refresh 2
    """
    s = settings()
    try:
        import uvicorn

        from console.app import create_app
    except ImportError as exc:
        raise Exit(
            2,
            f"simctl console needs the console extra ({exc.name} is missing): "
            "pip install 'simengine[console]'",
        ) from None

    async def check() -> None:
        # Refuse at once, with one line and exit 2, a database that is away or not migrated
        # (the server's own start-up failure would end in a traceback and uvicorn's exit 3).
        from store.db import connection
        from store.runs import deployment_id

        async with connection(s.database_url) as conn:
            await deployment_id(conn)

    run_async(check)
    if enable_actions and not s.sim_admin_keys_sha256:
        err.print(
            "simctl console: SIM_ADMIN_KEYS_SHA256 is empty: every action will be refused",
            markup=False,
        )
    hosts = ["127.0.0.1", "localhost", "[::1]"]
    if host not in ("127.0.0.1", "localhost", "::1"):
        hosts = ["*"]  # bound to an outside address: names are the operator's to choose
    app = create_app(s, enable_actions=enable_actions, refresh_s=refresh, allowed_hosts=hosts)
    mode = "actions enabled" if enable_actions else "read-only"
    shown = f"[{host}]" if ":" in host else host
    err.print(f"simctl console: http://{shown}:{port}/ ({mode})", markup=False)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
