"""simctl market: the stored market definition, and its audited changes."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import typer

from simconfig.settings import parse_asset_map
from simctl.common import Exit, KeyOpt, admin_fingerprint, out, print_json, run_async, settings

app = typer.Typer(
    help="The market definition stored by the first migrate (prices are a pure function of it).",
    no_args_is_help=True,
)


@app.command()
def show(
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help='Machine-readable: {"prices_now": {"at", "prices_usd"}, "versions"}.'
        ),
    ] = False,
) -> None:
    """The current prices (each asset's model price at the tick that has begun, by the
    database's clock) and every stored version of the market definition, its seed never shown.
    A version still ahead shows no start prices (they are the prices of a tick to come).

    Examples:

      simctl market show

      simctl market show --json
    """
    s = settings()

    async def go() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        from store.db import connection
        from store.market import describe, prices_now

        async with connection(s.database_url) as conn:
            versions = await describe(conn)
            return await prices_now(conn), versions

    now, versions = run_async(go)
    if as_json:
        print_json({"prices_now": now, "versions": versions})
        return
    out.print(f"prices at {now['at']}:", markup=False)
    for asset, price in now["prices_usd"].items():
        out.print(f"  {asset:<5} {price}", markup=False)
    out.print("versions:", markup=False)
    print_json(versions)


@app.command()
def change(
    volatility: Annotated[
        str | None,
        typer.Option("--volatility", help="New annualised volatilities, ASSET=VOL,..."),
    ] = None,
    reseed: Annotated[
        bool, typer.Option("--reseed", help="Draw a new secret seed (if the old one leaked).")
    ] = False,
    lead_s: Annotated[
        int,
        typer.Option(
            "--lead-s",
            help="Seconds from now to the first tick it applies from; at least 300 "
            "(a shorter lead time is refused).",
        ),
    ] = 3600,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in admin_audit).")] = "",
    admin_key: KeyOpt = None,
) -> None:
    """Store a new market version, effective from the first tick at least --lead-s (>= 300)
    from now: prices of earlier ticks never change, so no run's price does; at that tick each
    volatile asset starts from its price under the old definition. An admin act (audited).
    Running processes pick it up by themselves.

    Example: simctl market change --volatility BTC=0.5 --reseed --reason "seed exposed"
    """
    from engine.values import parse_text

    s = settings()
    actor = admin_fingerprint(s, admin_key)
    vols: dict[str, Decimal] = {}
    if volatility:
        try:
            vols = parse_asset_map(volatility)
        except ValueError as exc:
            raise Exit(2, f"--volatility: {exc}") from None
    if not reason.strip():
        raise Exit(2, "--reason is required: say why the market changes")
    parse_text(reason, "--reason", "reason")

    async def go() -> dict[str, Any]:
        from store.db import connection
        from store.market import change_market

        async with connection(s.database_url) as conn:
            return await change_market(
                conn, actor, volatility=vols, reseed=reseed, lead_s=lead_s, reason=reason
            )

    print_json(run_async(go))


@app.command()
def cancel(
    version: Annotated[
        int,
        typer.Argument(
            metavar="VERSION", min=1, max=2**31 - 1, help="The version to cancel (`market show`)."
        ),
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in admin_audit).")] = "",
    admin_key: KeyOpt = None,
) -> None:
    """Cancel a stored market change that is not in force yet: the newest version, starting
    more than 60 s from now. It is kept, marked cancelled, and prices nothing: running workers
    drop it before their next batch, and the cancel waits for the batches in flight. An admin
    act (audited). Refused (exit 1) for a version in force or starting within 60 s, version 1,
    one already cancelled, one with a later change on top of it, or one never stored.

    Example: simctl market cancel 3 --reason "wrong volatility"
    """
    from engine.values import parse_text

    s = settings()
    actor = admin_fingerprint(s, admin_key)
    if not reason.strip():
        raise Exit(2, "--reason is required: say why the change is cancelled")
    parse_text(reason, "--reason", "reason")

    async def go() -> dict[str, Any]:
        from store.db import connection
        from store.market import cancel_change

        async with connection(s.database_url) as conn:
            return await cancel_change(conn, actor, version, reason)

    print_json(run_async(go))
