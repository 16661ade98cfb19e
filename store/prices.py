"""Imported price history: all or nothing, never rewriting a price a run may have used."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from engine.assets import ASSETS
from engine.text import TextRefused, ascii_decimal, check_text
from store.db import ALL_IDS, Conn
from store.errors import Refused
from store.ledger import Discrepancy
from store.runs import audit
from store.sqlfiles import query


@dataclass(frozen=True, slots=True)
class Tick:
    line: int
    asset: str
    at: datetime
    price_usd: Decimal


def decode_lines(data: bytes) -> list[str]:
    """A file's lines as UTF-8 text (a leading BOM, as Excel writes, is dropped); Refused naming
    the first line that is not text (undecodable bytes, or a NUL as binary files have)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(f"line {number}: not UTF-8 text") from None
        if "\x00" in line:
            raise Refused(f"line {number}: binary content (a NUL byte), not CSV text")
        lines.append(line)
    return lines


def parse_csv(lines: Iterable[str]) -> list[Tick]:
    """Rows of `asset,at,price_usd` (ISO 8601 times with a zone); Refused naming the first bad line."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header] != ["asset", "at", "price_usd"]:
        raise Refused("line 1: the header must be asset,at,price_usd")
    ticks: list[Tick] = []
    seen: dict[tuple[str, datetime], int] = {}
    for number, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 3:
            raise Refused(f"line {number}: expected 3 fields, found {len(row)}")
        try:
            for name, field in zip(("asset", "at", "price_usd"), row, strict=True):
                check_text(field, name, "csv_field", empty=True)
            price = ascii_decimal(row[2], "price_usd")
        except TextRefused as exc:
            raise Refused(f"line {number}: {exc}") from None
        asset = row[0].strip().upper()
        if asset not in ASSETS:
            raise Refused(f"line {number}: unknown asset {row[0].strip()!r}")
        at = _instant(number, row[1].strip())
        if price <= 0 or price >= Decimal("1e12"):
            raise Refused(
                f"line {number}: price must be positive and below 1e12, got {row[2].strip()}"
            )
        if price != price.quantize(Decimal("0.00000001")):
            raise Refused(f"line {number}: price has more than 8 decimals")
        key = (asset, at)
        if key in seen:
            raise Refused(f"line {number}: {asset} at {at.isoformat()} already on line {seen[key]}")
        seen[key] = number
        ticks.append(Tick(number, asset, at, price))
    if not ticks:
        raise Refused("the file has no price rows")
    return ticks


def _instant(number: int, text: str) -> datetime:
    """An ISO 8601 time in ASCII with a zone, whose UTC instant lies in the years 1 to 9999
    (`0001-01-01T00:00:00+14:00` is in year 0 there); Refused naming the line otherwise."""
    if not text.isascii():
        raise Refused(f"line {number}: the time {text!r} must be written in ASCII digits")
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Refused(f"line {number}: {text!r} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise Refused(f"line {number}: {text!r} has no time zone")
    try:
        at.astimezone(UTC)
    except OverflowError:
        raise Refused(f"line {number}: {text!r} is outside the years 1 to 9999 in UTC") from None
    return at


@dataclass(frozen=True, slots=True)
class ImportReport:
    inserted: int
    unchanged: int
    spans: dict[str, tuple[datetime, datetime]]


async def import_ticks(
    conn: Conn, ticks: list[Tick], tick_s: int, *, actor: str, sha256: str, name: str
) -> ImportReport:
    """Import in one transaction holding the price fence exclusively (runs hold it shared),
    with its admin_audit row. Imports are history: a tick later than now is refused, so nobody
    can set the price of a slot that has not happened yet."""
    async with conn.transaction():
        await conn.execute(query("lock_price_fence"))
        now: datetime = await conn.fetchval("SELECT now()")
        for t in ticks:
            if t.at > now:
                raise Refused(
                    f"line {t.line}: {t.asset} at {t.at.isoformat()} is later than now "
                    f"({now.isoformat(timespec='seconds')}); imports are history"
                )
        stored = await conn.fetch(
            query("stored_ticks"), [t.asset for t in ticks], [t.at for t in ticks]
        )
        existing = {(r["asset"], r["at"]): r for r in stored}
        fresh: list[Tick] = []
        for t in ticks:
            row = existing.get((t.asset, t.at))
            if row is None:
                fresh.append(t)
            elif row["source"] != "import" or row["price_usd"] != t.price_usd:
                raise Refused(
                    f"line {t.line}: {t.asset} at {t.at.isoformat()} is already stored as "
                    f"{row['price_usd']} ({row['source']}); a stored price is never rewritten"
                )
        spans: dict[str, tuple[datetime, datetime]] = {}
        for asset in sorted({t.asset for t in ticks}):
            times = [t.at for t in ticks if t.asset == asset]
            current = await conn.fetchrow(
                "SELECT first_at, last_at FROM price_import_spans WHERE asset = $1", asset
            )
            first, last = min(times), max(times)
            if current is not None:
                first, last = min(first, current["first_at"]), max(last, current["last_at"])
            # A model tick at `at` priced every slot in [at, at + tick_s): any overlap with the new
            # span means a run may have used a model price the import would now contradict.
            clash = await conn.fetchval(
                query("model_price_in_span"), asset, first - timedelta(seconds=tick_s), last
            )
            if clash is not None:
                line = min(t.line for t in ticks if t.asset == asset)
                raise Refused(
                    f"line {line}: the {asset} span {first.isoformat()} .. {last.isoformat()} covers a "
                    f"model price already written at {clash.isoformat()}"
                )
            spans[asset] = (first, last)
        if fresh:
            await conn.execute(
                query("insert_imported_ticks"),
                [t.asset for t in fresh],
                [t.at for t in fresh],
                [t.price_usd for t in fresh],
            )
        for asset, (first, last) in spans.items():
            await conn.execute(query("upsert_import_span"), asset, first, last)
        await audit(
            conn,
            actor,
            "prices_import",
            None,
            {
                "file": name,
                "sha256": sha256,
                "rows": len(ticks),
                "inserted": len(fresh),
                "assets": sorted({t.asset for t in ticks}),
                "first_at": min(t.at for t in ticks).isoformat(),
                "last_at": max(t.at for t in ticks).isoformat(),
            },
        )
    return ImportReport(len(fresh), len(ticks) - len(fresh), spans)


async def show_prices(
    conn: Conn, asset: str, since: datetime | None, until: datetime | None, limit: int
) -> list[dict[str, object]]:
    rows = await conn.fetch(query("show_prices"), asset, since, until, limit)
    return [dict(r.items()) for r in rows]


def valuations_query(last_run: str) -> str:
    """The valuation check of users ($1, $2] (sql/queries.sql, valuations_at_slots), each at
    the slot `last_run` gives them: a statement returning (user_id, slot) for those users."""
    return f"WITH last_run AS MATERIALIZED ({last_run}), {query('valuations_at_slots')}"


async def audit_prices(
    conn: Conn, slippage_bps: int, user_id: int | None = None
) -> list[Discrepancy]:
    """Every engine trade whose price is not its tick's stored price moved by the slippage,
    exactly, and every user whose portfolio value is not holdings × the stored prices of their
    last run (reconcile's price audit: a process with another market cannot pass unnoticed)."""
    out: list[Discrepancy] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        trades = await conn.fetch(
            query("reconcile_trade_prices"), user_id, slippage_bps, 0, ALL_IDS
        )
        lo, hi = (0, ALL_IDS) if user_id is None else (user_id - 1, user_id)
        values = await conn.fetch(valuations_query(query("valuations_last_run")), lo, hi)
    for r in trades:
        what = f"trade {r['id']} {r['trade_type']} {r['asset']} at {r['generated_at'].isoformat()}"
        if r["stored_usd"] is None:
            what += " (no stored price for its tick)"
        else:
            what += f" (stored price {r['stored_usd']}, slippage {slippage_bps} bps)"
        out.append(
            Discrepancy(r["user_id"], f"{what}: price_usd", r["expected_usd"], r["price_usd"])
        )
    for r in values:
        out.append(
            Discrepancy(
                r["user_id"],
                "portfolio value at the stored prices of the last run",
                r["expected_usd"],
                r["usd_value"],
            )
        )
    return out
