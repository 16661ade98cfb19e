"""simctl market: the stored market definition, and its audited changes."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import typer

from simconfig.settings import parse_asset_map
from simctl.common import Exit, KeyOpt, admin_fingerprint, print_json, run_async, settings

app = typer.Typer(
    help="The market definition stored by the first migrate (prices are a pure function of it).",
    no_args_is_help=True,
)


@app.command()
def show() -> None:
    """Every stored version of the market definition (its seed is never shown).

    Example: simctl market show
    """
    s = settings()

    async def go() -> list[dict[str, Any]]:
        from store.db import connection
        from store.market import describe

        async with connection(s.database_url) as conn:
            return await describe(conn)

    print_json(run_async(go))


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
            min=1,
            help="Applies from the first tick this long from now; under 300 s is refused.",
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

    async def go() -> dict[str, Any]:
        from store.db import connection
        from store.market import change_market

        async with connection(s.database_url) as conn:
            return await change_market(
                conn, actor, volatility=vols, reseed=reseed, lead_s=lead_s, reason=reason
            )

    print_json(run_async(go))
