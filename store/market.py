"""The stored market definition: written by the first migrate, read by every process at start.

Prices are a pure function of (stored definition, asset, tick). SIM_SEED and the market settings
only choose what the first migrate stores; afterwards a process given a market setting that
differs from the stored definition refuses to start (MarketMismatch, exit 2), so two processes
can never price one tick differently. Changes are versions effective from a tick after a lead time;
a change not yet in force can be cancelled (marked, never deleted: see cancel_change).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from engine.assets import ASSETS
from engine.errors import SimError
from engine.market import AssetParams, Market, MarketParams
from simconfig import Settings
from store.db import Conn, Pool, Record, UndefinedTable, retrying
from store.errors import NotFound, Refused
from store.runs import audit
from store.sqlfiles import query

_GENESIS_TICK = -(2**62)  # version 1 is in force from the beginning of time
LEGACY_SEED = 42  # what SIM_SEED defaulted to before the market was stored
MIN_LEAD_S = 300
# A change may be cancelled only while its first tick starts more than this many seconds after
# the cancel's check (Postgres's clock, taken while the cancel holds the price fence).
CANCEL_MARGIN_S = 60


class MarketMismatch(SimError):
    """A setting contradicts the stored market, or none is stored: configuration (exit 2).
    Not a StoreError, so nothing that retries an unavailable database retries this."""


@dataclass(frozen=True, slots=True)
class MarketVersion:
    version: int
    effective_tick: int
    params: MarketParams
    created_at: datetime
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None


def _assets_json(params: MarketParams) -> dict[str, dict[str, Any]]:
    return {
        a: {
            "start_price_usd": str(p.start_price_usd),
            "annual_vol": str(p.annual_vol),
            "stable": p.stable,
        }
        for a, p in params.assets.items()
    }


def _params(row: Record) -> MarketParams:
    assets = {
        a: AssetParams(Decimal(v["start_price_usd"]), Decimal(v["annual_vol"]), bool(v["stable"]))
        for a, v in row["assets"].items()
    }
    return MarketParams(
        seed=row["seed"],
        tick_s=row["tick_s"],
        epoch=row["epoch"],
        assets=assets,
        model_version=row["model_version"],
    )


async def _versions(conn: Conn, *, cancelled: bool = False) -> list[MarketVersion]:
    """The stored versions in order: those in force or to come, and with `cancelled` the
    cancelled ones too (which price nothing)."""
    try:
        rows = await conn.fetch(
            "SELECT * FROM sim_market WHERE $1 OR cancelled_at IS NULL ORDER BY version", cancelled
        )
    except UndefinedTable:
        raise MarketMismatch(
            "configuration error: the database has no stored market: run `simctl migrate` first"
        ) from None
    return [
        MarketVersion(
            r["version"],
            r["effective_tick"],
            _params(r),
            r["created_at"],
            r["cancelled_at"],
            r["cancelled_by"],
        )
        for r in rows
    ]


def _build(versions: list[MarketVersion]) -> Market:
    first = versions[0]
    return Market(
        first.params,
        [(v.effective_tick, v.params) for v in versions[1:]],
        version=versions[-1].version,
    )


def mismatch(settings: Settings, versions: list[MarketVersion]) -> str | None:
    """The first market setting that differs from the stored definition, as one line."""
    first, last = versions[0].params, versions[-1].params
    why = "differs from the stored market definition (set by the first migrate"
    why += ")" if len(versions) == 1 else " and its changes)"
    # Only the seed and the volatilities can change after the first migrate (`simctl market
    # change --reseed / --volatility`); the tick, the epoch and the start prices never do.
    fixed = "; unset it (fixed for the life of the database)"
    changeable = "; unset it, or change the market with `simctl market change`"
    if settings.sim_seed is not None and settings.sim_seed != last.seed:
        return f"SIM_SEED {why}; unset it (`simctl market change --reseed` draws a new seed)"
    if settings.sim_tick_s is not None and settings.sim_tick_s != first.tick_s:
        return f"SIM_TICK_S={settings.sim_tick_s} {why}: stored {first.tick_s}{fixed}"
    if settings.sim_epoch is not None and settings.sim_epoch != first.epoch:
        return (
            f"SIM_EPOCH={settings.sim_epoch.isoformat()} {why}: "
            f"stored {first.epoch.isoformat()}{fixed}"
        )
    for asset, price in (settings.sim_start_prices or {}).items():
        stored = first.assets[asset].start_price_usd
        if price != stored:
            return f"SIM_START_PRICES: {asset}={price} {why}: stored {asset}={stored}{fixed}"
    for asset, vol in (settings.sim_volatility or {}).items():
        stored = last.assets[asset].annual_vol
        if vol != stored:
            return f"SIM_VOLATILITY: {asset}={vol} {why}: stored {asset}={stored}{changeable}"
    return None


async def load_market(conn: Conn, settings: Settings) -> Market:
    """The stored market, for a process starting; MarketMismatch if none is stored or a market
    setting of this process differs from it."""
    versions = await _versions(conn)
    if not versions:
        raise MarketMismatch(
            "configuration error: the database has no stored market: run `simctl migrate` first"
        )
    problem = mismatch(settings, versions)
    if problem is not None:
        raise MarketMismatch(f"configuration error: {problem}")
    return _build(versions)


async def load_market_retrying(pool: Pool, settings: Settings) -> Market:
    """load_market on a pool connection, again if the connection is lost (a process starting
    while Postgres restarts)."""

    async def once() -> Market:
        async with pool.acquire() as conn:
            return await load_market(conn, settings)

    return await retrying(once)


async def current_market(conn: Conn, market: Market, stored_version: int | None) -> Market:
    """`market`, or the stored one if a change was stored or cancelled since (`stored_version`
    is the newest version not cancelled that the caller read in its transaction: numbers are
    never given twice and only the newest version can be cancelled, so that number names the
    whole set of versions in force)."""
    if stored_version is None or stored_version == market.version:
        return market
    return _build(await _versions(conn))


async def ensure_market(
    conn: Conn, settings: Settings, *, seed_if_unset: int | None = None
) -> tuple[Market, bool]:
    """After the migrations: store the definition if none is (the first migrate), then check this
    process's settings against it. Returns (market, whether it was stored now).

    A database that already ran before the market was stored (it has runs or model prices) keeps
    the model it was priced with: version 1 of the model, and SIM_SEED or its old default 42."""
    created = False
    async with conn.transaction():
        await _lock_market(conn)
        if not await conn.fetchval("SELECT exists (SELECT 1 FROM sim_market)"):
            legacy = await conn.fetchval(
                "SELECT exists (SELECT 1 FROM sim_runs) "
                "OR exists (SELECT 1 FROM price_history WHERE source = 'model')"
            )
            if legacy:
                seed_from = "SIM_SEED" if settings.sim_seed is not None else "legacy default"
                params = settings.market_params(seed=LEGACY_SEED, model_version=1)
            else:
                drawn = seed_if_unset is None and settings.sim_seed is None
                seed = secrets.randbelow(2**63) if seed_if_unset is None else seed_if_unset
                params = settings.market_params(seed=seed)
                seed_from = (
                    "secrets" if drawn else "SIM_SEED" if settings.sim_seed is not None else "fixed"
                )
            await _insert(conn, 1, _GENESIS_TICK, params, "migrate")
            await audit(
                conn,
                "migrate",
                "market_define",
                None,
                {**_public(params), "version": 1, "seed_from": seed_from},
            )
            created = True
    return await load_market(conn, settings), created


async def _lock_market(conn: Conn) -> None:
    """Serialise the first store and every change for this transaction (the market row of
    sim_locks: a lock only a role that may write the engine's tables can take)."""
    await conn.execute(query("lock_market"))


def _public(params: MarketParams, *, ahead: bool = False) -> dict[str, Any]:
    """A definition as audit rows and output show it: everything but the secret seed. `ahead`:
    the version starts at a tick later than now, so its volatile assets' start prices (the
    model's prices at that tick) are not shown: no price of a tick to come is."""
    assets = _assets_json(params)
    if ahead:
        for entry in assets.values():
            if not entry["stable"]:
                entry["start_price_usd"] = None
    return {
        "model_version": params.model_version,
        "tick_s": params.tick_s,
        "epoch": params.epoch.isoformat(),
        "assets": assets,
    }


async def prices_now(conn: Conn) -> dict[str, Any]:
    """Each asset's model price at the tick containing Postgres's now() (the latest tick that
    has begun), with that tick's start: what `market show` and `market change` may show."""
    market = _build(await _versions(conn))
    now: datetime = await conn.fetchval("SELECT now()")
    return _prices_at_tick(market, market.tick_of(now))


def _prices_at_tick(market: Market, tick: int) -> dict[str, Any]:
    return {
        "at": market.tick_time(tick).isoformat(),
        "prices_usd": {a: str(market.price(a, tick)) for a in ASSETS},
    }


async def _insert(
    conn: Conn, version: int, effective_tick: int, params: MarketParams, by: str
) -> None:
    await conn.execute(
        "INSERT INTO sim_market (version, effective_tick, seed, tick_s, epoch, model_version, "
        "assets, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        version,
        effective_tick,
        params.seed,
        params.tick_s,
        params.epoch,
        params.model_version,
        _assets_json(params),
        by,
    )


async def describe(conn: Conn) -> list[dict[str, Any]]:
    """Every stored version without its seed (for `simctl market show`), cancelled ones with
    when and by whom (they price nothing)."""
    versions = await _versions(conn)
    if not versions:
        raise MarketMismatch("configuration error: the database has no stored market")
    out = []
    market = _build(versions)
    now_tick = market.tick_of(await conn.fetchval("SELECT now()"))
    for v in await _versions(conn, cancelled=True):
        ahead = v.effective_tick > now_tick
        entry: dict[str, Any] = {"version": v.version, **_public(v.params, ahead=ahead)}
        entry["effective_from"] = (
            None if v.version == 1 else market.tick_time(v.effective_tick).isoformat()
        )
        entry["created_at"] = v.created_at.isoformat()
        entry["cancelled_at"] = None if v.cancelled_at is None else v.cancelled_at.isoformat()
        entry["cancelled_by"] = v.cancelled_by
        out.append(entry)
    return out


async def change_market(
    conn: Conn,
    actor: str,
    *,
    volatility: Mapping[str, Decimal],
    reseed: bool,
    lead_s: int,
    reason: str,
) -> dict[str, Any]:
    """Store a new version effective from the first tick at least `lead_s` after now (database
    time): new volatilities and/or a fresh secret seed. Prices before it never change; at it
    each volatile asset starts from the price the old definition gives there."""
    if lead_s < MIN_LEAD_S:
        raise Refused(f"the lead time must be at least {MIN_LEAD_S} s, got {lead_s}")
    if not volatility and not reseed:
        raise Refused("nothing to change: give --volatility and/or --reseed")
    for asset, vol in volatility.items():
        if asset not in ASSETS:
            raise Refused(f"unknown asset {asset}")
        if not vol.is_finite() or not Decimal(0) < vol <= Decimal(5):
            raise Refused(f"volatility of {asset} must be above 0 and at most 5, got {vol}")
    async with conn.transaction():
        await _lock_market(conn)
        versions = await _versions(conn)
        if not versions:
            raise MarketMismatch("configuration error: the database has no stored market")
        market = _build(versions)
        now: datetime = await conn.fetchval("SELECT now()")
        tick = market.tick_of(now + timedelta(seconds=lead_s)) + 1
        if tick <= versions[-1].effective_tick:
            raise Refused("a change is already stored for a later tick")
        last = versions[-1].params
        assets = {}
        for asset, p in last.assets.items():
            if p.stable:
                assets[asset] = p
                continue
            vol = volatility.get(asset, p.annual_vol)
            assets[asset] = AssetParams(market.price(asset, tick), vol, False)
        params = MarketParams(
            seed=secrets.randbelow(2**63) if reseed else last.seed,
            tick_s=last.tick_s,
            epoch=market.tick_time(tick),
            assets=assets,
            model_version=last.model_version,  # a database keeps its model
        )
        # Never a cancelled version's number again (current_market relies on it).
        version = await conn.fetchval("SELECT max(version) + 1 FROM sim_market")
        await _insert(conn, version, tick, params, actor)
        details = {
            **_public(params, ahead=True),
            "version": version,
            "effective_from": market.tick_time(tick).isoformat(),
            "reseeded": reseed,
            "volatility": {a: str(v) for a, v in volatility.items()},
            "reason": reason,
        }
        await audit(conn, actor, "market_change", None, details)
    return {**details, "prices_now": _prices_at_tick(market, market.tick_of(now))}


async def cancel_change(
    conn: Conn, actor: str, version: int, reason: str, *, margin_s: float = CANCEL_MARGIN_S
) -> dict[str, Any]:
    """Cancel a stored change that is not in force yet: the newest version, whose first tick
    starts more than `margin_s` after now, is marked cancelled (kept, with its admin_audit row
    market_cancel, in the same transaction) and prices nothing, ever.

    Why no process can price a tick with it: every batch and the ticker read the newest
    version not cancelled in their own transaction, under the price fence's shared side
    (batch_prelude), and rebuild their market when it changed (current_market). The cancel takes
    the fence's exclusive side first, so it waits for the batches in flight and the next ones
    wait for its commit; it then checks the time on Postgres's clock. A batch prices no tick
    later than its transaction's now(), so the batches before the cancel never reached the
    version's first tick, and every batch after it reads the cancel. NotFound for a version
    never stored; Refused for version 1, one already cancelled, one with a later version on top
    of it, or one starting within `margin_s` (or already in force)."""
    async with conn.transaction():
        # The fence before the market's row lock, in `prices import`'s order of the two.
        await conn.execute(query("lock_price_fence"))
        await _lock_market(conn)
        stored = await _versions(conn, cancelled=True)
        found = next((v for v in stored if v.version == version), None)
        if found is None:
            raise NotFound(f"no market version {version} is stored")
        if version == 1:
            raise Refused("version 1 is the market's definition, in force from the beginning")
        if found.cancelled_at is not None:
            raise Refused(
                f"version {version} was already cancelled at "
                f"{found.cancelled_at.isoformat(timespec='seconds')} by {found.cancelled_by}"
            )
        live = [v for v in stored if v.cancelled_at is None]
        if live[-1].version != version:
            raise Refused(
                f"version {live[-1].version} is stored after version {version} and builds on "
                f"it: cancel version {live[-1].version} first"
            )
        market = _build(live)
        starts = market.tick_time(found.effective_tick)
        now: datetime = await conn.fetchval("SELECT clock_timestamp()")
        if starts <= now + timedelta(seconds=margin_s):
            state = "is in force since" if starts <= now else "starts at"
            raise Refused(
                f"version {version} {state} {starts.isoformat(timespec='seconds')}: only a "
                f"change starting more than {margin_s:g} s from now can be cancelled"
            )
        await conn.execute(
            "UPDATE sim_market SET cancelled_at = now(), cancelled_by = $2 WHERE version = $1",
            version,
            actor,
        )
        details = {
            "version": version,
            "effective_from": starts.isoformat(),
            "newest_version_after": live[-2].version,
            "reason": reason,
        }
        audit_id = await audit(conn, actor, "market_cancel", None, details)
    return {**details, "audit_id": audit_id}
