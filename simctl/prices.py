"""simctl prices: import real ticks, show stored ones."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from simctl.common import Exit, KeyOpt, admin_fingerprint, print_json, run_async, settings
from store.db import connection
from store.errors import Refused

app = typer.Typer(help="Imported and model prices in price_history.", no_args_is_help=True)


@app.command("import")
def import_(
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="CSV with header asset,at,price_usd (ISO 8601 times)."),
    ],
    admin_key: KeyOpt = None,
) -> None:
    """Import real ticks (history: none later than now), all or nothing. A slot inside an
    asset's imported span (first to last imported tick) is priced at the latest imported tick at
    or before it instead of the model. An admin act: needs an admin key, and writes admin_audit
    with the file's SHA-256, assets, span and rows. UTF-8, with or without a BOM.

    Refused (exit 1, naming the line): a bad row, a tick later than now, a tick that differs
    from a stored one, a span covering model prices already written, or content that is not
    UTF-8 text. Re-importing identical ticks changes nothing. A missing or unreadable file: exit 2.

    Example:

    \b
      simctl prices import btc-2024-03.csv --admin-key-file ~/.simengine/admin.key
    """
    from store.prices import decode_lines, import_ticks, parse_csv

    s = settings()
    actor = admin_fingerprint(s, admin_key)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise Exit(2, f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        ticks = parse_csv(decode_lines(data))
    except Refused as exc:
        raise Exit(1, f"{file}: {exc}; nothing imported") from None
    digest = hashlib.sha256(data).hexdigest()

    async def go() -> Any:
        from store.market import load_market

        async with connection(s.database_url) as conn:
            market = await load_market(conn, s)
            try:
                return await import_ticks(
                    conn, ticks, market.params.tick_s, actor=actor, sha256=digest, name=file.name
                )
            except Refused as exc:
                raise Refused(f"{file}: {exc}; nothing imported") from None

    report = run_async(go)
    print_json(
        {
            "sha256": digest,
            "inserted": report.inserted,
            "unchanged": report.unchanged,
            "spans": {a: {"first": f, "last": t} for a, (f, t) in report.spans.items()},
        }
    )


@app.command()
def show(
    asset: Annotated[
        str, typer.Argument(metavar="ASSET", help="BTC, ETH, USDT, USDC, XRP or ADA.")
    ],
    since: Annotated[
        datetime | None, typer.Option("--since", help="ISO time, e.g. 2026-11-01T00:00:00+00:00.")
    ] = None,
    until: Annotated[datetime | None, typer.Option("--until", help="ISO time.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000)] = 100,
) -> None:
    """Stored prices of an asset, newest first (model ticks and imports, with their source).

    Example:

    \b
      simctl prices show BTC --since 2026-11-25T00:00:00+00:00 --limit 10
    """
    from engine.values import parse_asset
    from store.prices import show_prices

    s = settings()
    checked = parse_asset(asset)

    async def go() -> list[dict[str, object]]:
        async with connection(s.database_url) as conn:
            return await show_prices(conn, checked, _aware(since), _aware(until), limit)

    print_json(run_async(go))


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise Exit(2, f"{value.isoformat()} needs a time zone (e.g. +00:00)")
    return value
