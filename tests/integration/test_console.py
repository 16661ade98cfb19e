"""The console in process (httpx over ASGI) against a real Postgres: every page, every action
refused without a CSRF token or an admin key and audited with them, read-only mode refusing
every write, no secret in any response, hostile text escaped; and the simctl commands that share
the actions' store functions."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from console.app import create_app
from console.security import SESSION_COOKIE
from engine.market import Market
from simconfig import Settings
from store.db import create_pool
from store.moves import adjust_holding
from store.runs import claim_due, record_failure
from store.users import create_user
from store.withdrawals import request_withdrawal
from tests.support.keys import with_admin_key
from tests.support.procs import simctl
from tests.support.runs import drive
from workers.batch import BatchRunner

KEY = "console-test-key-7f3a"
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()
FINGERPRINT = "sha256:" + DIGEST[:12]
ACTOR = "sha256:setup"
# Secrets put in the database: no response may carry them.
PASSWORD_HASH = "$argon2id$v=19$SECRET-HASH-4b1d"
TAX_ID = "TAXID-SECRET-99817"
MARKET_SEED = 918273645546372819
HOSTILE = "<script>alert('x')</script>"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@dataclass
class World:
    plain: int  # a user with runs
    hostile: int  # a user named with markup
    failing: int  # failed once, backing off
    auto_paused: int  # paused by the engine after failures
    dca: list[int]  # users of the dca strategy
    withdrawal: int  # a pending withdrawal of the hostile user, to a hostile address


async def _user(pg: asyncpg.Connection, email: str, name: str, strategy: str | None) -> int:
    uid: int = await create_user(pg, ACTOR, email, name, Decimal("1000"), True, 300, strategy)
    return uid


@pytest.fixture
async def world(pg: asyncpg.Connection, db_url: str, settings: Settings) -> World:
    plain = await _user(pg, "Ana@Example.com", "Ana Silva", "random")
    hostile = await _user(pg, "mallory@example.com", HOSTILE, None)
    failing = await _user(pg, "fail@example.com", "Fay", None)
    auto_paused = await _user(pg, "auto@example.com", "Otto", None)
    dca = [await _user(pg, f"dca{i}@example.com", f"D {i}", "dca") for i in range(3)]
    pool = await create_pool(db_url, max_size=2)
    try:
        runner = BatchRunner(pool, settings, Market(settings.market_params()))
        await drive(pg, runner, plain, [START + timedelta(minutes=5 * i) for i in range(6)])
    finally:
        await pool.close()
    await record_failure(pg, failing, "boom: <b>bold</b> & more", 30, 3)
    for _ in range(3):
        await record_failure(pg, auto_paused, "strategy exploded", 30, 3)
    await adjust_holding(pg, ACTOR, hostile, "BTC", Decimal("0.5"), "airdrop")
    withdrawal = await request_withdrawal(
        pg, ACTOR, hostile, "BTC", Decimal("0.1"), "<img src=x onerror=alert(1)>"
    )
    await pg.execute("UPDATE users SET password_hash = $1, tax_id = $2", PASSWORD_HASH, TAX_ID)
    await pg.execute("UPDATE sim_market SET seed = $1", MARKET_SEED)
    return World(plain, hostile, failing, auto_paused, dca, withdrawal)


@pytest.fixture
def console_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"sim_admin_keys_sha256": (DIGEST,)})


class Client:
    """An httpx client on the app in process, with the session's CSRF token at hand."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def get(self, url: str, **kw: object) -> httpx.Response:
        return await self.http.get(url, **kw)  # type: ignore[arg-type]

    async def csrf(self) -> str:
        page = await self.http.get("/")
        found = re.search(r'name="csrf" value="([^"]*)"', page.text)
        assert found is not None, "no CSRF token on a page of an actions console"
        return found.group(1)

    async def post(self, url: str, form: dict[str, str]) -> httpx.Response:
        return await self.http.post(url, data=form)


async def _client(settings: Settings, *, actions: bool) -> AsyncIterator[Client]:
    app = create_app(settings, enable_actions=actions, redis=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as http,
    ):
        yield Client(http)


@pytest.fixture
async def reader(world: World, console_settings: Settings) -> AsyncIterator[Client]:
    async for c in _client(console_settings, actions=False):
        yield c


@pytest.fixture
async def admin(world: World, console_settings: Settings) -> AsyncIterator[Client]:
    async for c in _client(console_settings, actions=True):
        yield c


def _pages(w: World) -> list[str]:
    return [
        "/",
        "/?refresh=2",
        "/api/overview",
        "/api/claims",
        "/users",
        "/users?q=ANA@example.COM",
        f"/users?q={w.hostile}",
        "/users?q=nobody@example.com",
        "/users?state=failing",
        "/users?state=auto_paused",
        "/users?state=paused&strategy=dca",
        "/users?state=inactive",
        f"/users/{w.plain}",
        f"/users/{w.hostile}",
        f"/users/{w.failing}",
        f"/users/{w.plain}?table=trades&before=999999",
        f"/api/users/{w.plain}/series",
        f"/api/users/{w.hostile}/series",
        "/failing",
        "/withdrawals",
        "/withdrawals?status=pending",
        "/readers",
        "/market",
        "/api/market/prices",
        "/api/market/prices?hours=720",
        f"/users/{w.hostile}?table=withdrawals",
        "/audit",
        f"/audit?user={w.plain}",
        "/actions/bulk?change=pause&state=all",
        "/actions/bulk?change=resume&state=auto_paused",
        "/actions/bulk?change=set_strategy&to=dca&state=all",
    ]


def _no_secret(text: str) -> None:
    for secret in (PASSWORD_HASH, TAX_ID, str(MARKET_SEED), DIGEST, "password_hash", "tax_id"):
        assert secret not in text, secret


@pytest.mark.parametrize("actions", [False, True])
async def test_every_page_answers_without_a_secret_and_escapes_hostile_text(
    world: World, console_settings: Settings, actions: bool
) -> None:
    async for client in _client(console_settings, actions=actions):
        for url in _pages(world):
            response = await client.get(url)
            assert response.status_code == 200, (url, response.text[:300])
            _no_secret(response.text)
            assert "<script>alert" not in response.text, url
            assert "<b>bold" not in response.text, url
            assert "<img" not in response.text, url
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "script-src 'self'" in response.headers["content-security-policy"]
        page = await client.get(f"/users/{world.hostile}")
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page.text
        series = await client.get(f"/api/users/{world.hostile}/series")
        assert series.headers["content-type"].startswith("application/json")


async def test_search_filters_and_keyset_paging(
    reader: Client, world: World, pg: asyncpg.Connection
) -> None:
    found = await reader.get("/users?q=ANA@EXAMPLE.COM")
    assert f'href="/users/{world.plain}"' in found.text and "dca0@" not in found.text
    by_id = await reader.get(f"/users?q={world.failing}")
    assert "fail@example.com" in by_id.text and "ana@example.com" not in by_id.text
    missing = await reader.get("/users?q=nobody@example.com")
    assert "no user with email" in missing.text and "no users match" in missing.text
    failing = await reader.get("/users?state=failing")
    assert "fail@example.com" in failing.text and "auto@example.com" not in failing.text
    auto = await reader.get("/users?state=auto_paused")
    assert "auto@example.com" in auto.text and "fail@example.com" not in auto.text
    dca = await reader.get("/users?strategy=dca")
    assert all(f"dca{i}@" in dca.text for i in range(3)) and "ana@" not in dca.text
    # Keyset paging: a second page starts after the first page's last id, filters kept.
    for i in range(60):
        await _user(pg, f"bulk{i:02}@example.com", "", "dca")
    first = await reader.get("/users?strategy=dca")
    link = re.search(r'href="/users\?([^"]*after=(\d+)[^"]*)" id="next"', first.text)
    assert link is not None and "strategy=dca" in link.group(1)
    second = await reader.get("/users?" + link.group(1).replace("&amp;", "&"))
    ids = [int(x) for x in re.findall(r'<a href="/users/(\d+)">', second.text)]
    assert ids and min(ids) > int(link.group(2))
    assert len(ids) == 63 - 50


async def test_bad_parameters_are_refused_in_words(reader: Client) -> None:
    for url in ("/users?state=nope", "/users?after=-1", "/users?after=%C2%B2", "/?refresh=0"):
        response = await reader.get(url)
        assert response.status_code == 400, url
    assert (await reader.get("/users/123456789")).status_code == 404
    assert (await reader.get("/users/abc")).status_code == 404


async def test_the_user_chart_is_the_reports_series(
    reader: Client, world: World, pg: asyncpg.Connection
) -> None:
    data = (await reader.get(f"/api/users/{world.plain}/series")).json()
    assert len(data["t"]) == 6 and len(data["pnl_usd"]) == 6
    pnl = await pg.fetchval("SELECT total_pnl_usd FROM sim_pnl WHERE user_id = $1", world.plain)
    # One P&L everywhere: the chart's last point is sim_pnl's (as `simctl report` checks).
    assert Decimal(data["summary"]["pnl_usd"]) == pnl
    assert abs(data["pnl_usd"][-1] - float(pnl)) < 1e-6
    assert set(data["market_pct"]) >= {"BTC", "ETH"}
    # Drawdown as the report has it: at or below zero, its lowest the curve's max drawdown.
    assert all(d <= 0 for d in data["drawdown_usd"])
    assert abs(min(data["drawdown_usd"]) - float(data["summary"]["max_drawdown_usd"])) < 1e-6


async def test_a_read_only_console_refuses_every_write(
    reader: Client, world: World, pg: asyncpg.Connection, console_settings: Settings
) -> None:
    before = await pg.fetchval("SELECT count(*) FROM admin_audit")
    paused = await pg.fetchval("SELECT count(*) FROM users WHERE sim_paused")
    form = {"csrf": "x", "admin_key": KEY, "change": "pause", "state": "all", "expect": "7"}
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for url in (
            "/actions/bulk",
            "/actions/claims",
            f"/actions/withdrawals/{world.withdrawal}",
            "/actions/readers",
            "/actions/market/cancel",
            "/",
            "/users",
            "/no/such/route",
        ):
            response = await reader.http.request(method, url, data=form)
            assert response.status_code == 403, (method, url)
            assert "read-only" in response.text
    assert await pg.fetchval("SELECT count(*) FROM admin_audit") == before
    assert await pg.fetchval("SELECT count(*) FROM users WHERE sim_paused") == paused
    page = await reader.get("/actions/bulk?change=pause&state=all")
    assert 'action="/actions/bulk"' not in page.text and "read-only" in page.text


async def test_a_read_only_consoles_connections_cannot_write(
    world: World, console_settings: Settings
) -> None:
    app = create_app(console_settings, enable_actions=False, redis=False)
    async with app.router.lifespan_context(app):
        pool = app.state.console.pool
        async with pool.acquire() as conn:
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await conn.execute("UPDATE users SET sim_paused = true")


async def test_the_consoles_connections_plan_afresh_and_never_jit_compile(
    console_settings: Settings,
) -> None:
    # Its reads are index probes whose estimated costs cross jit_above_cost: compiling them took
    # 0.8 s of a 0.85 s overview while the engine ran. And they take no parameters, so a cached
    # prepared statement keeps its first plan: one made on an empty trades table walked it whole
    # once the engine had filled it (docs/benchmarks.md). No named statement is kept.
    from store.console import overview

    for actions in (False, True):
        app = create_app(console_settings, enable_actions=actions, redis=False, heartbeat=False)
        async with (
            app.router.lifespan_context(app),
            app.state.console.pool.acquire() as conn,
        ):
            assert await conn.fetchval("SHOW jit") == "off"
            await overview(conn)
            assert await conn.fetchval("SELECT count(*) FROM pg_prepared_statements") == 0


async def test_an_action_without_the_sessions_csrf_token_is_refused(
    admin: Client, world: World, pg: asyncpg.Connection, console_settings: Settings
) -> None:
    token = await admin.csrf()
    form = {"admin_key": KEY, "change": "pause", "state": "all", "expect": "8"}
    for bad in ({}, {"csrf": ""}, {"csrf": token[:-2] + "xx"}):
        response = await admin.post("/actions/bulk", {**form, **bad})
        assert response.status_code == 403 and "CSRF" in response.text
    # Another session's token does not fit this session.
    async for other in _client(console_settings, actions=True):
        other_token = await other.csrf()
        assert other_token != token
        response = await admin.post("/actions/bulk", {**form, "csrf": other_token})
        assert response.status_code == 403
    # Without the session cookie at all (a cross-site post: SameSite=Strict drops it).
    admin.http.cookies.clear()
    response = await admin.post("/actions/bulk", {**form, "csrf": token})
    assert response.status_code == 403
    assert await pg.fetchval("SELECT count(*) FROM users WHERE sim_paused") == 1
    assert await pg.fetchval("SELECT count(*) FROM admin_audit WHERE action LIKE 'bulk_%'") == 0


async def test_the_session_cookie_is_signed_strict_and_http_only(admin: Client) -> None:
    response = await admin.get("/")
    cookie = response.headers["set-cookie"]
    assert SESSION_COOKIE in cookie and "httponly" in cookie.lower()
    assert "samesite=strict" in cookie.lower()
    assert KEY not in cookie and DIGEST not in cookie
    forged = httpx.AsyncClient(transport=admin.http._transport, base_url="http://127.0.0.1")
    forged.cookies.set(SESSION_COOKIE, "made-up.session")
    async with forged:
        again = await forged.get("/")
        assert "set-cookie" in again.headers  # a cookie this process did not sign is replaced


async def test_another_host_name_is_refused(admin: Client) -> None:
    response = await admin.http.get("/", headers={"host": "attacker.example"})
    assert response.status_code == 400


async def test_an_action_without_an_accepted_admin_key_is_refused(
    admin: Client, world: World, pg: asyncpg.Connection
) -> None:
    audited = await pg.fetchval("SELECT count(*) FROM admin_audit")
    token = await admin.csrf()
    form = {"csrf": token, "change": "pause", "state": "all", "expect": "8"}
    for key in ({}, {"admin_key": ""}, {"admin_key": KEY + "x"}, {"admin_key": DIGEST}):
        response = await admin.post("/actions/bulk", {**form, **key})
        assert response.status_code == 403 and "admin key" in response.text
        claims = await admin.post("/actions/claims", {"csrf": token, "paused": "1", **key})
        assert claims.status_code == 403
        step = await admin.post(
            f"/actions/withdrawals/{world.withdrawal}", {"csrf": token, "step": "process", **key}
        )
        assert step.status_code == 403
        cancel = await admin.post(
            "/actions/market/cancel",
            {"csrf": token, "version": "2", "confirm": "2", "reason": "x", **key},
        )
        assert cancel.status_code == 403 and "admin key" in cancel.text
    assert await pg.fetchval("SELECT count(*) FROM admin_audit") == audited
    assert not await pg.fetchval("SELECT claims_paused FROM sim_control")
    assert await pg.fetchval("SELECT status FROM withdrawals") == "pending"


async def test_bulk_pause_dry_run_then_confirmation_then_audit(
    admin: Client, world: World, pg: asyncpg.Connection
) -> None:
    dry = await admin.get("/actions/bulk?change=pause&strategy=dca")
    assert re.search(r'id="count">3<', dry.text)
    token = re.search(r'name="csrf" value="([^"]*)"', dry.text)
    assert token is not None
    form = {
        "csrf": token.group(1),
        "admin_key": KEY,
        "change": "pause",
        "state": "all",
        "strategy": "dca",
        "user_id": "",
        "expect": "3",
    }
    # One more dca user since the dry run: the confirmation no longer holds.
    await _user(pg, "late@example.com", "", "dca")
    stale = await admin.post("/actions/bulk", form)
    assert stale.status_code == 400 and "now matches 4 users" in stale.text
    assert await pg.fetchval("SELECT count(*) FROM users WHERE sim_paused") == 1
    done = await admin.post("/actions/bulk", {**form, "expect": "4"})
    assert done.status_code == 200 and "4 user(s) changed" in done.text
    paused = await pg.fetchval(
        "SELECT array_agg(id ORDER BY id) FROM users WHERE sim_paused AND sim_strategy = 'dca'"
    )
    assert len(paused) == 4
    row = await pg.fetchrow("SELECT * FROM admin_audit WHERE action = 'bulk_pause'")
    assert row is not None
    assert row["admin_key"] == FINGERPRINT and row["target_user_id"] is None
    details = row["details"] if isinstance(row["details"], dict) else json.loads(row["details"])
    assert details["user_ids"] == paused and details["count"] == 4
    assert details["filter"] == {"state": "all", "strategy": "dca", "user_id": None}
    audit_page = await admin.get("/audit?action=bulk_pause")
    assert FINGERPRINT in audit_page.text and DIGEST not in audit_page.text
    # Resuming one auto-paused user from the failing page's link clears its failures.
    dry = await admin.get(f"/actions/bulk?change=resume&user={world.auto_paused}")
    assert re.search(r'id="count">1<', dry.text)
    form = {
        "csrf": token.group(1),
        "admin_key": KEY,
        "change": "resume",
        "state": "all",
        "strategy": "",
        "user_id": str(world.auto_paused),
        "expect": "1",
    }
    assert (await admin.post("/actions/bulk", form)).status_code == 200
    state = await pg.fetchrow(
        "SELECT sim_paused, sim_fail_count FROM users WHERE id = $1", world.auto_paused
    )
    assert state is not None and tuple(state) == (False, 0)


async def test_pausing_claims_stops_every_claim_until_resumed(
    admin: Client, world: World, pg: asyncpg.Connection
) -> None:
    await pg.execute("UPDATE users SET sim_next_run_at = now() - interval '1 minute'")
    token = await admin.csrf()
    done = await admin.post(
        "/actions/claims", {"csrf": token, "admin_key": KEY, "paused": "1", "reason": "upgrade"}
    )
    assert done.status_code == 200 and "claims paused" in done.text
    assert (await claim_due(pg, 100, 60)).claims == []
    overview = await admin.get("/")
    assert "paused" in overview.text and "upgrade" in overview.text
    again = await admin.post("/actions/claims", {"csrf": token, "admin_key": KEY, "paused": "1"})
    assert again.status_code == 400 and "already paused" in again.text
    await admin.post("/actions/claims", {"csrf": token, "admin_key": KEY, "paused": "0"})
    assert len((await claim_due(pg, 100, 60)).claims) > 0
    rows = await pg.fetch(
        "SELECT action, admin_key, details FROM admin_audit WHERE action LIKE 'claims_%' ORDER BY id"
    )
    assert [(r["action"], r["admin_key"]) for r in rows] == [
        ("claims_pause", FINGERPRINT),
        ("claims_resume", FINGERPRINT),
    ]


async def test_the_overview_counts_runs_failures_and_the_last_hour(
    reader: Client, world: World, pg: asyncpg.Connection
) -> None:
    data = (await reader.get("/api/overview")).json()
    assert data["failing"] == 1 and data["auto_paused"] == 1
    assert data["eligible"] == 6 and data["due_now"] <= 6 and data["due_capped"] is False
    assert data["claims_paused"] is False
    # drive() committed six runs just now: they are in the last minute's and hour's windows.
    assert data["runs_1h"] == 6 and data["runs_per_s"] == round(6 / 60, 2)
    assert sum(data["series"]["runs"]) == 6
    # Trades estimated from ids: the rows of one transaction share one created_at (as a run's
    # trades do), and every one of them is counted.
    await pg.execute(
        """INSERT INTO trades (user_id, trade_type, asset, amount, price_usd, total_usd, fee_usd,
                               is_simulated, balance_before, balance_after)
           SELECT $1, 'buy', 'BTC', 1, 1, 1, 0, false, 1, 0 FROM generate_series(1, 3)""",
        world.plain,
    )
    trades = await pg.fetchval("SELECT count(*) FROM trades")
    data = (await reader.get("/api/overview")).json()
    assert trades >= 4 and sum(data["series"]["trades"]) == trades
    assert data["trades_per_s"] == round(trades / 60, 2)
    assert data["lag_p99_s"] is not None and data["lag_p50_s"] is not None
    failing = await reader.get("/failing")
    assert "fail@example.com" in failing.text and "auto@example.com" in failing.text
    assert "boom: &lt;b&gt;bold&lt;/b&gt; &amp; more" in failing.text
    since = await pg.fetchval("SELECT sim_failing_since FROM users WHERE id = $1", world.failing)
    assert since is not None and since.strftime("%Y-%m-%d %H:%M:%S") in failing.text


def test_users_list_failing_and_bulk_commands(world: World, env: dict[str, str]) -> None:
    listed = simctl(["users", "list", "--failing"], env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any("fail@example.com" in ln and "boom" in ln and "retry after" in ln for ln in lines)
    assert any(
        "auto@example.com" in ln and "strategy exploded" in ln and "auto-paused" in ln
        for ln in lines
    )
    assert not any("ana@example.com" in ln for ln in lines)
    as_json = json.loads(simctl(["users", "list", "--failing", "--json"], env).stdout)
    assert {r["email"] for r in as_json} == {"fail@example.com", "auto@example.com"}
    assert all("password_hash" not in r and "tax_id" not in r for r in as_json)

    keyed = with_admin_key(env, KEY)
    dry = simctl(["users", "bulk-pause", "--strategy", "dca"], keyed)
    assert dry.returncode == 0 and json.loads(dry.stdout.split("\n(")[0])["would_change"] == 3
    no_key = simctl(["users", "bulk-pause", "--strategy", "dca", "--expect", "3"], env)
    assert no_key.returncode == 1 and "admin key" in no_key.stderr
    wrong = simctl(["users", "bulk-pause", "--strategy", "dca", "--expect", "2"], keyed)
    assert wrong.returncode == 1 and "now matches 3 users" in wrong.stderr
    done = simctl(["users", "bulk-pause", "--strategy", "dca", "--expect", "3"], keyed)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["changed"] == 3
    bad_state = simctl(["users", "bulk-resume", "--state", "weird"], keyed)
    assert bad_state.returncode == 2

    paused = simctl(["claims", "pause", "--reason", "maintenance"], keyed)
    assert paused.returncode == 0, paused.stderr
    shown = json.loads(simctl(["claims", "show"], env).stdout)
    assert shown["claims_paused"] is True and shown["changed_by"] == FINGERPRINT
    assert simctl(["claims", "pause"], keyed).returncode == 1
    assert simctl(["claims", "resume"], keyed).returncode == 0


async def test_a_withdrawal_is_processed_completed_or_failed_from_the_queue(
    admin: Client, world: World, pg: asyncpg.Connection
) -> None:
    queue = await admin.get("/withdrawals?status=pending")
    assert f'action="/actions/withdrawals/{world.withdrawal}"' in queue.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in queue.text
    token = await admin.csrf()
    url = f"/actions/withdrawals/{world.withdrawal}"
    base = {"csrf": token, "admin_key": KEY}
    early = await admin.post(url, {**base, "step": "complete", "tx_hash": "0xabc"})
    assert early.status_code == 400 and "cannot complete" in early.text
    assert (await admin.post(url, {**base, "step": "process"})).status_code == 200
    bad = await admin.post(url, {**base, "step": "complete", "tx_hash": "0x\u202eabc"})
    assert bad.status_code == 400
    done = await admin.post(url, {**base, "step": "complete", "tx_hash": "0xabc"})
    assert done.status_code == 200 and "processing → completed" in done.text
    assert await pg.fetchval("SELECT status FROM withdrawals") == "completed"
    held = await pg.fetchval("SELECT btc FROM portfolio WHERE user_id = $1", world.hostile)
    assert held == Decimal("0.4")
    rows = await pg.fetch(
        "SELECT action, admin_key FROM admin_audit WHERE action LIKE 'withdrawal_%' ORDER BY id"
    )
    assert [(r["action"], r["admin_key"]) for r in rows] == [
        ("withdrawal_request", ACTOR),
        ("withdrawal_process", FINGERPRINT),
        ("withdrawal_complete", FINGERPRINT),
    ]
    missing = await admin.post("/actions/withdrawals/99999", {**base, "step": "process"})
    assert missing.status_code == 404


async def test_a_reader_role_is_dropped_with_its_grants_and_audited_and_no_other_role(
    admin: Client, pg: asyncpg.Connection, db_name: str, env: dict[str, str]
) -> None:
    from store.roles import grant_reader

    reader = f"console_reader_{db_name[-12:]}"
    other = f"console_other_{db_name[-12:]}"
    await grant_reader(pg, reader, verifier=None)
    await pg.execute(f'CREATE ROLE "{other}" LOGIN')
    try:
        page = await admin.get("/readers")
        assert reader in page.text and other not in page.text
        token = await admin.csrf()
        base = {"csrf": token, "admin_key": KEY}
        unconfirmed = await admin.post("/actions/readers", {**base, "role": reader})
        assert unconfirmed.status_code == 400
        refused = await admin.post("/actions/readers", {**base, "role": other, "confirm": other})
        assert refused.status_code == 400 and "not a reader" in refused.text
        no_key = await admin.post(
            "/actions/readers", {"csrf": token, "role": reader, "confirm": reader}
        )
        assert no_key.status_code == 403
        assert await pg.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", reader) == 1
        done = await admin.post("/actions/readers", {**base, "role": reader, "confirm": reader})
        assert done.status_code == 200, done.text
        assert await pg.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", reader) == 0
        row = await pg.fetchrow(
            "SELECT admin_key, details FROM admin_audit WHERE action = 'drop_reader'"
        )
        assert row is not None and row["admin_key"] == FINGERPRINT
        assert row["details"]["role"] == reader
        # The same store function from a shell: the other role is refused there too.
        cli = simctl(["drop-reader", other], with_admin_key(env, KEY))
        assert cli.returncode == 1 and "not a reader" in cli.stderr
    finally:
        for name in (reader, other):
            if await pg.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
                await pg.execute(f'DROP OWNED BY "{name}"')
                await pg.execute(f'DROP ROLE "{name}"')


async def test_every_post_route_checks_the_csrf_token_first(
    world: World, console_settings: Settings, pg: asyncpg.Connection
) -> None:
    """A route added later cannot forget the check: each POST route is posted without a token
    but with an accepted key, and refused before anything is read or written."""
    app = create_app(console_settings, enable_actions=True, redis=False)
    posts = [
        re.sub(r"\{[^}]+\}", "1", getattr(route, "path", ""))
        for route in app.routes
        if "POST" in (getattr(route, "methods", None) or ())
    ]
    assert len(posts) >= 4
    audited = await pg.fetchval("SELECT count(*) FROM admin_audit")
    async for client in _client(console_settings, actions=True):
        for url in posts:
            response = await client.post(url, {"admin_key": KEY, "role": "x", "step": "fail"})
            assert response.status_code == 403 and "CSRF" in response.text, url
    assert await pg.fetchval("SELECT count(*) FROM admin_audit") == audited


async def test_set_strategy_for_a_filter_from_the_users_page(
    admin: Client, world: World, pg: asyncpg.Connection
) -> None:
    users = await admin.get("/users?state=failing")
    assert 'id="bulk-strategy"' in users.text
    dry = await admin.get(
        "/actions/bulk?change=set_strategy&state=failing&to=momentum&params=%7B%7D"
    )
    assert re.search(r'id="count">1<', dry.text)
    token = await admin.csrf()
    form = {
        "csrf": token,
        "admin_key": KEY,
        "change": "set_strategy",
        "state": "failing",
        "strategy": "",
        "user_id": "",
        "expect": "1",
        "to": "momentum",
        "params": '{"win_rate": "0.9"}',
    }
    refused = await admin.post("/actions/bulk", form)
    assert refused.status_code == 400 and "win_rate" in refused.text
    done = await admin.post("/actions/bulk", {**form, "params": "{}"})
    assert done.status_code == 200, done.text
    assert await pg.fetchval("SELECT sim_strategy FROM users WHERE id = $1", world.failing) == (
        "momentum"
    )
    row = await pg.fetchrow(
        "SELECT admin_key, details FROM admin_audit WHERE action = 'bulk_set_strategy'"
    )
    assert row is not None and row["admin_key"] == FINGERPRINT
    assert (
        row["details"]["user_ids"] == [world.failing] and row["details"]["strategy"] == "momentum"
    )


def _executed_seq_scans(node: object) -> set[str]:
    """The relations an EXPLAIN ANALYZE plan read with a Seq Scan that actually ran."""
    if isinstance(node, list):
        return set().union(*(_executed_seq_scans(n) for n in node))
    if not isinstance(node, dict):
        return set()
    ran = node.get("Node Type") == "Seq Scan" and node.get("Actual Loops", 0) > 0
    found = {node["Relation Name"]} if ran else set()
    for value in node.values():
        if isinstance(value, list | dict):
            found |= _executed_seq_scans(value)
    return found


async def test_the_consoles_reads_walk_indexes_not_tables_on_50k_users(
    pg: asyncpg.Connection,
) -> None:
    from engine.assets import ASSETS
    from store.bulk import UserFilter, filtered
    from store.console import DUE_CAP, overview
    from store.seed import seed_demo
    from store.sqlfiles import query

    await seed_demo(pg, 50_000, 5)
    # The newest runs in a partition of their own, as on a platform's every day after the first
    # (today's partition, made ahead) and in a suite run straddling midnight UTC (the template's
    # default partition ends at the midnight after it was made): a partition from 100 seconds
    # ago to the next day's, with its own primary key as sim_runs_add_partitions makes them,
    # unless today's already exists.
    await pg.execute(
        """DO $$ BEGIN
             IF to_regclass(format('sim_runs_p%s', to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')))
                IS NULL THEN
               EXECUTE format('CREATE TABLE sim_runs_newest PARTITION OF sim_runs
                                 FOR VALUES FROM (%L) TO (%L)', now() - interval '100 seconds',
                              date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                                + interval '1 day');
               ALTER TABLE sim_runs_newest ADD PRIMARY KEY (id);
             END IF;
           END $$"""
    )
    # Four rounds of every user, five minutes apart, each a hundred batches of 500 runs a second
    # apart (a batch's runs share their times). Not one timestamp for a whole round: the newest
    # round alone in its partition, all of one timestamp, all matched "the earliest run of the
    # last minute", and was read whole.
    await pg.execute(
        """INSERT INTO sim_runs (user_id, scheduled_for, started_at, finished_at, outcome,
                                 trades_count)
           SELECT (i % 50000) + 1, now() - make_interval(secs => s + 1),
                  now() - make_interval(secs => s), now() - make_interval(secs => s), 'applied', 1
             FROM generate_series(0, 199999) AS i,
                  LATERAL (SELECT 300 * (i / 50000) + (i % 50000) / 500 AS s) AS ago"""
    )
    await pg.execute(
        """INSERT INTO trades (user_id, trade_type, asset, amount, price_usd, total_usd, fee_usd,
                               is_simulated, balance_before, balance_after, sim_run_id,
                               generated_at, created_at)
           SELECT user_id, 'buy', 'BTC', 1, 1, 1, 0, true, 1, 0, id, finished_at, finished_at
             FROM sim_runs"""
    )
    await pg.execute("UPDATE users SET sim_fail_count = 1 WHERE id % 5000 = 0")
    # A month of a ticker's minutes per asset: the last tick is one probe of the primary key.
    await pg.execute(
        """INSERT INTO price_history (asset, at, price_usd, source)
           SELECT a, date_trunc('minute', now()) - make_interval(mins => i), 1, 'model'
             FROM unnest($1::text[]) AS a, generate_series(1, 43200) AS i
           ON CONFLICT DO NOTHING""",
        list(ASSETS),
    )
    await pg.execute("ANALYZE")
    plans: dict[str, tuple[Any, ...]] = {
        "overview_counts": (query("overview_counts", "console.sql"), DUE_CAP, list(ASSETS)),
        "overview_recent": (query("overview_recent", "console.sql"),),
        "overview_series": (query("overview_series", "console.sql"),),
        "overview_state": (query("overview_state", "console.sql"),),
        "processes": (query("seen", "processes.sql"), 30.0),
        "failing": (filtered("list_users", UserFilter("failing")), 0, None, None, 50),
        "users": (filtered("list_users", UserFilter()), 25_000, None, None, 50),
        "user_runs": (query("user_runs", "console.sql"), 7, 2**63 - 1, 20),
        "user_trades": (query("user_trades", "console.sql"), 7, 2**63 - 1, 20),
        "audit": (query("audit_page", "console.sql"), 2**63 - 1, None, None, 50),
    }
    # sim_runs' day partitions made ahead (0015) are empty here: a scan of one reads no page.
    empty = {
        r["relname"]
        for r in await pg.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'sim_runs'::regclass AND pg_relation_size(c.oid) = 0"
        )
    }
    for name, (sql, *args) in plans.items():
        plan = await pg.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + str(sql), *args)
        scanned = _executed_seq_scans(json.loads(plan) if isinstance(plan, str) else plan)
        # sim_control, sim_checkpoints and sim_processes (one row per running process) hold a
        # row or a few; admin_audit is small here.
        allowed = {"sim_control", "sim_checkpoints", "sim_processes", "admin_audit"}
        assert scanned - empty <= allowed, (name, scanned)
    # 50,000 users due: the overview says "at least", having read DUE_CAP of them.
    await pg.execute("UPDATE users SET sim_next_run_at = now() - interval '1 minute'")
    data = await overview(pg)
    assert (data["due_now"], data["due_capped"]) == (DUE_CAP, True)
    assert data["due_shown"] == "≥ 10,000"


async def test_the_market_page_shows_the_definition_and_prices_up_to_now_never_the_seed(
    reader: Client, pg: asyncpg.Connection
) -> None:
    await pg.execute(
        """INSERT INTO price_history (asset, at, price_usd, source)
           VALUES ('BTC', now() - interval '2 hours', 50000, 'import'),
                  ('BTC', now() - interval '1 hour', 51000, 'import'),
                  ('BTC', now() + interval '1 hour', 99999, 'import')"""
    )
    page = await reader.get("/market")
    assert page.status_code == 200 and "market_define" in page.text
    assert str(MARKET_SEED) not in page.text
    prices = (await reader.get("/api/market/prices?hours=3")).json()
    assert prices["BTC"]["price_usd"] == [50000.0, 51000.0]  # the tick to come is not shown
    assert prices["BTC"]["last_usd"] == "51000.00000000"
    assert (await reader.get("/api/market/prices?hours=0")).status_code == 400


async def test_a_pending_market_change_is_cancelled_from_the_market_page(
    admin: Client, reader: Client, pg: asyncpg.Connection
) -> None:
    from store.market import change_market

    await change_market(pg, ACTOR, volatility={}, reseed=True, lead_s=3600, reason="rotation")
    shown = await reader.get("/market")
    assert "pending" in shown.text and 'action="/actions/market/cancel"' not in shown.text
    page = await admin.get("/market")
    assert page.text.count('action="/actions/market/cancel"') == 1  # version 2 only
    token = await admin.csrf()
    form = {"csrf": token, "admin_key": KEY, "version": "2", "reason": "wrong <seed>"}
    unconfirmed = await admin.post("/actions/market/cancel", {**form, "confirm": "1"})
    assert unconfirmed.status_code == 400 and "confirm" in unconfirmed.text
    no_csrf = await admin.post(
        "/actions/market/cancel", {k: v for k, v in form.items() if k != "csrf"} | {"confirm": "2"}
    )
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
    assert await pg.fetchval("SELECT count(*) FROM sim_market WHERE cancelled_at IS NOT NULL") == 0
    done = await admin.post("/actions/market/cancel", {**form, "confirm": "2"})
    assert done.status_code == 200 and "market version 2 cancelled" in done.text
    row = await pg.fetchrow(
        "SELECT admin_key, details FROM admin_audit WHERE action = 'market_cancel'"
    )
    assert (
        row is not None
        and row["admin_key"] == FINGERPRINT
        and row["details"]["reason"] == "wrong <seed>"
    )
    assert await pg.fetchval("SELECT cancelled_by FROM sim_market WHERE version = 2") == FINGERPRINT
    # The same refusals as the command: version 1, or one cancelled already.
    for version, said in (("1", "version 1 is the market"), ("2", "already cancelled")):
        refused = await admin.post(
            "/actions/market/cancel", {**form, "version": version, "confirm": version}
        )
        assert refused.status_code == 400 and said in refused.text
    missing = await admin.post("/actions/market/cancel", {**form, "version": "9", "confirm": "9"})
    assert missing.status_code == 404
    after = await admin.get("/market")
    assert 'action="/actions/market/cancel"' not in after.text and FINGERPRINT in after.text
    assert "wrong <seed>" not in after.text  # escaped wherever the audit's reason is shown
    _no_secret(after.text)


def test_simctl_console_refuses_a_database_it_cannot_read_in_one_line(env: dict[str, str]) -> None:
    from tests.support.services import url_for

    away = simctl(["console", "--port", "1"], {**env, "DATABASE_URL": url_for("simengine_none")})
    assert away.returncode == 2 and "cannot connect" in away.stderr
    assert len(away.stderr.strip().splitlines()) == 1
    refused = simctl(["console", "--host", "127.0.0.1", "--port", "0"], env)
    assert refused.returncode == 2 and "--port" in refused.stderr


async def test_rows_written_together_are_all_counted_by_the_id_estimates(
    pg: asyncpg.Connection,
) -> None:
    """A batch's rows share one timestamp; the estimate starts at the smallest id among them."""
    from store.console import overview
    from store.seed import seed_demo

    await seed_demo(pg, 3, 1)
    await pg.execute(
        """INSERT INTO sim_runs (user_id, scheduled_for, started_at, finished_at, outcome,
                                 trades_count)
           SELECT u, now() - interval '5 s', now(), now(), 'applied', 2 FROM generate_series(1, 3) u"""
    )
    await pg.execute(
        """INSERT INTO trades (user_id, trade_type, asset, amount, price_usd, total_usd, fee_usd,
                               is_simulated, balance_before, balance_after)
           SELECT u % 3 + 1, 'buy', 'BTC', 1, 1, 1, 0, false, 1, 0 FROM generate_series(1, 6) u"""
    )
    data = await overview(pg)
    assert sum(data["series"]["runs"]) == 3 and sum(data["series"]["trades"]) == 6
    assert data["runs_per_s"] == round(3 / 60, 2) and data["trades_per_s"] == round(6 / 60, 2)


def _rows_read(node: object) -> int:
    """Rows an EXPLAIN ANALYZE plan's scans returned or filtered out, over all their loops."""
    if isinstance(node, list):
        return sum(_rows_read(n) for n in node)
    if not isinstance(node, dict):
        return 0
    loops = node.get("Actual Loops", 0)
    read = 0
    if "Scan" in str(node.get("Node Type", "")):
        read = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * loops
    return read + sum(_rows_read(v) for v in node.values() if isinstance(v, list | dict))


async def test_the_id_estimates_read_one_moments_rows_not_the_history_before_it(
    pg: asyncpg.Connection,
) -> None:
    # 100,000 trades two hours ago, then 3 batches in the last minute (1,000 rows per moment, as
    # big batches write them): the first id of a moment is found among that moment's rows; a
    # walk of the primary key from the oldest row, filtering on the timestamp, read every older
    # trade (seen with the engine running, docs/benchmarks.md).
    from store.seed import seed_demo
    from store.sqlfiles import query

    await seed_demo(pg, 3, 1)
    await pg.execute(
        """INSERT INTO trades (user_id, trade_type, asset, amount, price_usd, total_usd, fee_usd,
                               is_simulated, balance_before, balance_after, created_at)
           SELECT u % 3 + 1, 'buy', 'BTC', 1, 1, 1, 0, true, 1, 0,
                  now() - interval '2 hours' + make_interval(secs => u / 1000)
             FROM generate_series(1, 100000) u"""
    )
    await pg.execute(
        """INSERT INTO trades (user_id, trade_type, asset, amount, price_usd, total_usd, fee_usd,
                               is_simulated, balance_before, balance_after, created_at)
           SELECT u % 3 + 1, 'buy', 'BTC', 1, 1, 1, 0, true, 1, 0,
                  now() - make_interval(secs => 30 - u / 1000)
             FROM generate_series(1, 3000) u"""
    )
    await pg.execute("ANALYZE")
    # The series probes each of its 60 minutes twice, each probe reading one moment's rows.
    for name, bound in (("overview_recent", 5_000), ("overview_series", 125_000)):
        plan = await pg.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + query(name, "console.sql"))
        read = _rows_read(json.loads(plan) if isinstance(plan, str) else plan)
        assert read < bound, (name, read)
