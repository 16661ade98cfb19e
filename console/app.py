"""The console's ASGI app: pages, their JSON, and the actions.

Read-only unless started with actions enabled, enforced in one place (`guard`: every method but
GET and HEAD is refused before any route runs) and again by Postgres (the pool's transactions
are read-only). Every action goes through `action_form`: the CSRF token of the session, then the
admin key, compared in constant time and never kept; the store function behind it writes the
admin_audit row with the key's fingerprint in the same transaction as the change."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from console.security import CSRF_FIELD, HEADERS, SESSION_COOKIE, Sessions, key_fingerprint
from engine.errors import SimError
from engine.text import printable
from store.bulk import STATES, Change, UserFilter, apply_change, count_change, list_users
from store.console import (
    NEWEST,
    TABLES,
    asset_prices,
    audit_page,
    failing_users,
    market_events,
    overview,
    user_page,
    user_rows,
    withdrawals_page,
)
from store.control import claims_state, set_claims_paused
from store.db import Conn, Pool, create_pool
from store.errors import NotFound, Refused

if TYPE_CHECKING:
    from simconfig import Settings

PAGE = 50
USER_ROWS = 20
MAX_FORM_BYTES = 16 * 1024
REFRESH_CHOICES = (1.0, 2.0, 5.0, 15.0, 30.0, 60.0)
CHANGES: tuple[Change, ...] = ("pause", "resume", "set_strategy")
# The chart of a user's P&L: at most this many points (evenly spaced runs, the last one kept).
MAX_POINTS = 2000


@dataclass
class Console:
    """What the app holds: made at start-up by the lifespan, closed at shutdown."""

    settings: Settings
    enable_actions: bool
    refresh_s: float
    sessions: Sessions = field(default_factory=Sessions)
    pool: Pool | None = None
    redis: Any = None
    queue_name: str | None = None


def plain(value: Decimal) -> str:
    """A Decimal at its stored scale (`0.00000000`, never `0E-8` or `-0`), as simctl prints it."""
    text = format(value, "f")
    return "0" + text[2:] if text.startswith("-0") and not value else text


def _finalize(value: object) -> object:
    # Every {{ }} passes here: text the console did not write shows its control characters
    # escaped (autoescape then escapes the HTML), numbers print at the ledger's scale.
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, Decimal):
        return plain(value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if value is None:
        return "-"
    return value


_env = Environment(
    loader=PackageLoader("console", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    finalize=_finalize,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return plain(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def json_text(data: object) -> str:
    """JSON with <, > and & escaped: safe even where a browser might read it as HTML."""
    text = json.dumps(data, default=_json_default, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def json_response(data: object, status_code: int = 200) -> Response:
    return Response(json_text(data), status_code, media_type="application/json")


def _console(request: Request) -> Console:
    found: Console = request.app.state.console
    return found


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    c = _console(request)
    session = getattr(request.state, "session", None)
    html = _env.get_template(template).render(
        actions=c.enable_actions,
        csrf_field=CSRF_FIELD,
        csrf=c.sessions.csrf_token(session) if session else "",
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code)


def refusal(request: Request, status_code: int, message: str) -> Response:
    if request.url.path.startswith("/api/"):
        return json_response({"error": message}, status_code)
    return render(request, "message.html", status_code, title="Refused", message=message)


# -- the one guard ------------------------------------------------------------------------------
async def guard(request: Request, call_next: RequestResponseEndpoint) -> Response:
    """Read-only mode for every non-GET, the session cookie, the security headers."""
    c = _console(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    session = c.sessions.session_of(cookie)
    new_cookie = None
    if session is None:
        new_cookie = c.sessions.new_cookie()
        session = c.sessions.session_of(new_cookie)
    request.state.session = session
    if request.method not in ("GET", "HEAD") and not c.enable_actions:
        response = refusal(
            request, 403, "refused: this console is read-only (start it with --enable-actions)"
        )
    else:
        response = await call_next(request)
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if new_cookie is not None:
        response.set_cookie(SESSION_COOKIE, new_cookie, httponly=True, samesite="strict", path="/")
    return response


async def action_form(request: Request) -> tuple[dict[str, str], str]:
    """The posted form and the fingerprint of its admin key; Refused (CSRF token missing or
    wrong, no key, a key not accepted) before anything is read or written."""
    c = _console(request)
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        raise _Forbidden("refused: an action is a form post")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise _Forbidden("refused: the form is too large")
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise _Forbidden("refused: the form is not UTF-8") from None
    form = {k: v[0] for k, v in parsed.items()}
    if not c.sessions.csrf_ok(getattr(request.state, "session", None), form.get(CSRF_FIELD)):
        raise _Forbidden("refused: the form's CSRF token is missing or stale; reload the page")
    fingerprint = key_fingerprint(form.pop("admin_key", None), c.settings.sim_admin_keys_sha256)
    if fingerprint is None:
        raise _Forbidden(
            "refused: this action needs an admin key whose SHA-256 is in SIM_ADMIN_KEYS_SHA256"
        )
    return form, fingerprint


class _Forbidden(Exception):
    pass


def page(
    fn: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """A route whose refusals (bad input, no such row, a refused action) become a page."""

    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except _Forbidden as exc:
            return refusal(request, 403, str(exc))
        except NotFound as exc:
            return refusal(request, 404, str(exc))
        except SimError as exc:  # Refused, Rejected: the request breaks a rule
            return refusal(request, 400, str(exc))

    return wrapped


@asynccontextmanager
async def reading(request: Request) -> AsyncIterator[Conn]:
    """A pooled connection in a read-only transaction (the pool's own are read-only too unless
    actions are enabled)."""
    pool = _console(request).pool
    assert pool is not None
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        yield conn


@asynccontextmanager
async def writing(request: Request) -> AsyncIterator[Conn]:
    """A pooled connection for an action (its store function opens the transaction)."""
    pool = _console(request).pool
    assert pool is not None
    async with pool.acquire() as conn:
        yield conn


# -- query parameters ---------------------------------------------------------------------------
def _int_param(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name, "")
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise Refused(f"{name} must be a whole number")
    value = int(text)
    if value >= 2**63:
        raise Refused(f"{name} is too large")
    return value


def _refresh(request: Request) -> float:
    text = request.query_params.get("refresh", "")
    try:
        value = float(text) if text else _console(request).refresh_s
    except ValueError:
        raise Refused("refresh must be a number of seconds") from None
    if not math.isfinite(value) or value < 0.5 or value > 3600:
        raise Refused("refresh must be between 0.5 and 3600 seconds")
    return value


async def _filter(request: Request, conn: Conn) -> tuple[UserFilter, str, str | None]:
    """The users filter the URL holds (q: an id or an email, found as `users` finds it), the
    search text and what the search found wrong (None when fine)."""
    from store.users import resolve_user

    q = request.query_params.get("q", "").strip()
    state = request.query_params.get("state", "all") or "all"
    if state not in STATES:
        raise Refused(f"unknown state {state!r}: one of {', '.join(STATES)}")
    strategy = request.query_params.get("strategy", "").strip() or None
    user_id: int | None = None
    problem = None
    if "user" in request.query_params:
        user_id = _int_param(request, "user", 0)
    if q:
        try:
            user_id = await resolve_user(conn, q)
        except SimError as exc:
            problem = str(exc)
            user_id = 0  # no user has id 0: an empty page
    return UserFilter(state, strategy, user_id), q, problem


def _query(**params: object) -> str:
    return urlencode({k: v for k, v in params.items() if v not in (None, "", "all")})


# -- pages --------------------------------------------------------------------------------------
async def _overview_data(request: Request) -> dict[str, Any]:
    c = _console(request)
    async with reading(request) as conn:
        data = await overview(conn)
    data["queue_depth"] = await _queue_depth(c)
    return data


async def _queue_depth(c: Console) -> int | None:
    if c.redis is None or c.queue_name is None:
        return None
    from workers.queue import pending_jobs

    try:
        return await asyncio.wait_for(
            pending_jobs(c.redis, c.queue_name, c.settings.sim_lease_s), timeout=1.0
        )
    except Exception:  # Redis away: the page still shows what Postgres knows
        return None


@page
async def overview_page(request: Request) -> Response:
    refresh = _refresh(request)
    data = await _overview_data(request)
    return render(
        request,
        "overview.html",
        title="Overview",
        data=data,
        refresh=refresh,
        choices=REFRESH_CHOICES,
    )


@page
async def overview_json(request: Request) -> Response:
    return json_response(await _overview_data(request))


@page
async def users_page(request: Request) -> Response:
    after = _int_param(request, "after", 0)
    async with reading(request) as conn:
        flt, q, problem = await _filter(request, conn)
        rows = await list_users(conn, flt, after, PAGE)
    more = (
        _query(q=q, state=flt.state, strategy=flt.strategy, after=rows[-1]["id"])
        if len(rows) == PAGE
        else None
    )
    here = _query(q=q, state=flt.state, strategy=flt.strategy)
    return render(
        request,
        "users.html",
        title="Users",
        rows=rows,
        q=q,
        flt=flt,
        states=STATES,
        problem=problem,
        more=more,
        here=here,
        first=bool(after),
    )


@page
async def failing_page(request: Request) -> Response:
    after = _int_param(request, "after", 0)
    async with reading(request) as conn:
        rows = await failing_users(conn, after, PAGE)
    more = _query(after=rows[-1]["id"]) if len(rows) == PAGE else None
    return render(request, "failing.html", title="Failing users", rows=rows, more=more)


def _user_id(request: Request) -> int:
    text = str(request.path_params["user_id"])
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) >= 2**63:
        raise NotFound(f"no user with id {text}")
    return int(text)


@page
async def user_detail(request: Request) -> Response:
    user_id = _user_id(request)
    table = request.query_params.get("table", "")
    before = _int_param(request, "before", NEWEST)
    async with reading(request) as conn:
        user = await user_page(conn, user_id)
        tables = {
            t: await user_rows(conn, user_id, t, before if t == table else NEWEST, USER_ROWS)  # type: ignore[arg-type]
            for t in TABLES
        }
    older = {
        t: _query(table=t, before=rows[-1]["id"]) + f"#{t}"
        for t, rows in tables.items()
        if len(rows) == USER_ROWS
    }
    return render(
        request,
        "user.html",
        title=f"User {user_id}",
        user=user,
        tables=tables,
        older=older,
        paged=table if table in TABLES else None,
    )


def _thin(n: int) -> list[int]:
    """Indexes of at most MAX_POINTS evenly spaced points of n, the last one always."""
    if n <= MAX_POINTS:
        return list(range(n))
    step = n / MAX_POINTS
    picked = sorted({int(i * step) for i in range(MAX_POINTS)} | {n - 1})
    return picked


@page
async def user_series(request: Request) -> Response:
    """The tear sheet's series (the same code as `simctl report`: store.tearsheet, engine.equity)
    for the user's chart."""
    from engine.assets import ASSETS
    from store.tearsheet import report_data

    user_id = _user_id(request)
    pool = _console(request).pool
    assert pool is not None
    async with pool.acquire() as conn:  # report_data opens its own read-only snapshot
        data = await report_data(conn, user_id)
    curve = data.curve()
    points = [curve.points[i] for i in _thin(len(curve.points))]

    def ts(at: datetime) -> float:
        return at.timestamp()

    firsts = {a: next((p.prices[a] for p in points if p.prices.get(a)), None) for a in ASSETS}
    market = {
        a: [float(p.prices[a] / first - 1) * 100 if p.prices.get(a) else None for p in points]
        for a in ASSETS
        if (first := firsts[a])
    }
    fills = [
        {
            "t": ts(f.at),
            "side": f.trade.side,
            "asset": f.trade.asset,
            "price_usd": plain(f.trade.price_usd),
            "amount": plain(f.trade.amount),
        }
        for f in curve.fills[-500:]
    ]
    return json_response(
        {
            "user_id": user_id,
            "t": [ts(p.at) for p in points],
            "pnl_usd": [float(p.pnl_usd) for p in points],
            "drawdown_usd": [float(p.drawdown_usd) for p in points],  # <= 0, as the report draws it
            "value_usd": [float(p.value_usd) for p in points],
            "contributions_usd": [float(p.contributions_usd) for p in points],
            "market_pct": market,
            "fills": fills,
            "summary": {
                "runs": len(curve.points),
                "pnl_usd": plain(curve.pnl_usd),
                "pnl_now_usd": None if data.pnl_now_usd is None else plain(data.pnl_now_usd),
                "fees_usd": plain(curve.fees_usd),
                "max_drawdown_usd": plain(curve.max_drawdown_usd),
                "market_move_pct": {
                    a: plain((m * 100).quantize(Decimal("0.01")))
                    for a, m in curve.market_move.items()
                },
            },
        }
    )


@page
async def audit_log(request: Request) -> Response:
    before = _int_param(request, "before", NEWEST)
    action = request.query_params.get("action", "").strip() or None
    user = _int_param(request, "user", 0) or None
    async with reading(request) as conn:
        rows = await audit_page(conn, before, action, user, PAGE)
    for r in rows:
        r["details_text"] = json.dumps(r["details"], default=str, ensure_ascii=False)[:2000]
    more = _query(action=action, user=user, before=rows[-1]["id"]) if len(rows) == PAGE else None
    return render(
        request, "audit.html", title="Audit log", rows=rows, action=action, user=user, more=more
    )


WITHDRAWAL_STATUSES = ("pending", "processing", "completed", "failed")


@page
async def withdrawals_queue(request: Request) -> Response:
    before = _int_param(request, "before", NEWEST)
    status = request.query_params.get("status", "").strip() or None
    if status is not None and status not in WITHDRAWAL_STATUSES:
        raise Refused(f"unknown status {status!r}: one of {', '.join(WITHDRAWAL_STATUSES)}")
    user = _int_param(request, "user", 0) or None
    async with reading(request) as conn:
        rows = await withdrawals_page(conn, before, status, user, PAGE)
    more = _query(status=status, user=user, before=rows[-1]["id"]) if len(rows) == PAGE else None
    return render(
        request,
        "withdrawals.html",
        title="Withdrawals",
        rows=rows,
        status=status,
        statuses=WITHDRAWAL_STATUSES,
        more=more,
    )


@page
async def market_page(request: Request) -> Response:
    """The stored definition without its seed (store.market.describe, as `simctl market show`),
    the prices up to now, and the definition, changes and imports from the audit."""
    from store.market import describe

    async with reading(request) as conn:
        versions = await describe(conn)
        events = await market_events(conn)
        now: datetime = await conn.fetchval("SELECT now()")
    for e in events:
        e["details_text"] = json.dumps(e["details"], default=str, ensure_ascii=False)[:2000]
    # The one version a cancel may be of: the newest not cancelled, if it starts later than now
    # (cancel_change decides, with its margin, under its locks).
    live = [v for v in versions if v["cancelled_at"] is None]
    newest = live[-1]
    pending = (
        newest["version"]
        if newest["effective_from"] is not None
        and datetime.fromisoformat(newest["effective_from"]) > now
        else None
    )
    return render(
        request, "market.html", title="Market", versions=versions, events=events, pending=pending
    )


@page
async def market_prices(request: Request) -> Response:
    """Every asset's stored prices over the last `hours` (default 24, at most 720), as % since
    the window's first price, for the market chart."""
    from datetime import timedelta

    from engine.assets import ASSETS

    hours = _int_param(request, "hours", 24)
    if not 1 <= hours <= 720:
        raise Refused("hours must be between 1 and 720")
    async with reading(request) as conn:
        now: datetime = await conn.fetchval("SELECT now()")
        series = {a: await asset_prices(conn, a, now - timedelta(hours=hours)) for a in ASSETS}
    return json_response(
        {
            a: {
                "t": [t for t, _ in points],
                "price_usd": [float(p) for _, p in points],
                "last_usd": plain(points[-1][1]) if points else None,
            }
            for a, points in series.items()
        }
    )


@page
async def readers_page(request: Request) -> Response:
    from store.roles import readers

    async with reading(request) as conn:
        names = await readers(conn)
    return render(request, "readers.html", title="Reader roles", names=names)


# -- actions ------------------------------------------------------------------------------------
def _change(text: str) -> Change:
    if text not in CHANGES:
        raise Refused(f"unknown change {text!r}: one of {', '.join(CHANGES)}")
    return text


def _strategy_params(form: dict[str, str]) -> tuple[str | None, dict[str, Any] | None]:
    to = form.get("to", "").strip() or None
    text = form.get("params", "").strip() or "{}"
    try:
        params = json.loads(text)
    except json.JSONDecodeError:
        raise Refused("params must be a JSON object") from None
    if not isinstance(params, dict):
        raise Refused("params must be a JSON object")
    return to, params


@page
async def bulk_preview(request: Request) -> Response:
    """The dry run: how many users the change would change now, and the confirmation form."""
    change = _change(request.query_params.get("change", "pause"))
    to, params = _strategy_params(dict(request.query_params))
    if change == "set_strategy" and to is None:
        raise Refused("set_strategy needs the strategy to set (to)")
    async with reading(request) as conn:
        flt, q, problem = await _filter(request, conn)
        if problem:
            raise Refused(problem)
        count = await count_change(conn, flt, change)
        sample = await list_users(conn, flt, 0, 10)
    return render(
        request,
        "bulk.html",
        title="Confirm",
        change=change,
        flt=flt,
        q=q,
        count=count,
        sample=sample,
        to=to,
        params=json.dumps(params),
    )


@page
async def bulk_apply(request: Request) -> Response:
    form, actor = await action_form(request)
    change = _change(form.get("change", ""))
    state = form.get("state", "all") or "all"
    if state not in STATES:
        raise Refused(f"unknown state {state!r}")
    expect_text = form.get("expect", "")
    if not (expect_text.isascii() and expect_text.isdigit()):
        raise Refused("expect (the dry run's count) must be a whole number")
    user_text = form.get("user_id", "")
    user_id = int(user_text) if user_text.isascii() and user_text.isdigit() else None
    flt = UserFilter(state, form.get("strategy") or None, user_id)
    to, params = _strategy_params(form)
    async with writing(request) as conn:
        result = await apply_change(
            conn, actor, flt, change, int(expect_text), strategy=to, params=params
        )
    return render(
        request,
        "message.html",
        title="Done",
        message=f"{result['action']}: {result['changed']} user(s) changed, "
        f"audit row {result['audit_id']} by {actor}",
    )


@page
async def claims_apply(request: Request) -> Response:
    form, actor = await action_form(request)
    paused = form.get("paused", "")
    if paused not in ("1", "0"):
        raise Refused("paused must be 1 or 0")
    async with writing(request) as conn:
        result = await set_claims_paused(conn, actor, paused == "1", form.get("reason", ""))
    what = "paused" if result["claims_paused"] else "resumed"
    return render(
        request,
        "message.html",
        title="Done",
        message=f"claims {what}: audit row {result['audit_id']} by {actor}",
    )


@page
async def withdrawal_apply(request: Request) -> Response:
    """process, complete or fail one withdrawal: store.withdrawals.move_withdrawal, as
    `simctl withdrawals process|complete|fail` does."""
    from engine.text import check_text
    from store.withdrawals import move_withdrawal

    form, actor = await action_form(request)
    text = str(request.path_params["withdrawal_id"])
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise NotFound(f"no withdrawal with id {text}")
    step = form.get("step", "")
    if step not in ("process", "complete", "fail"):
        raise Refused("step must be process, complete or fail")
    tx_hash = form.get("tx_hash", "").strip() or None
    error = form.get("error", "").strip() or None
    if tx_hash is not None:
        check_text(tx_hash, "tx hash", "tx_hash")
    if step == "fail":
        if error is None:
            raise Refused("a failed withdrawal needs the reason (error)")
        check_text(error, "error", "reason")
    async with writing(request) as conn:
        details = await move_withdrawal(conn, actor, int(text), step, tx_hash, error)
    return render(
        request,
        "message.html",
        title="Done",
        message=f"withdrawal {text}: {details['from']} → {details['to']} by {actor}",
    )


@page
async def reader_drop(request: Request) -> Response:
    """Drop a reader role: store.roles.drop_reader, as `simctl drop-reader` does."""
    from store.roles import drop_reader

    form, actor = await action_form(request)
    role = form.get("role", "")
    if form.get("confirm", "") != role:
        raise Refused("type the role's name again to confirm")
    async with writing(request) as conn:
        result = await drop_reader(conn, actor, role)
    return render(
        request,
        "message.html",
        title="Done",
        message=f"role {role} dropped: audit row {result['audit_id']} by {actor}",
    )


@page
async def market_cancel(request: Request) -> Response:
    """Cancel a pending market change: store.market.cancel_change, as `simctl market cancel`
    does (the same refusals: in force or within the margin, version 1, not the newest)."""
    from engine.text import check_text
    from store.market import cancel_change

    form, actor = await action_form(request)
    text = form.get("version", "")
    if not (text.isascii() and text.isdigit()) or not 1 <= len(text) <= 9:
        raise Refused("version must be a version number")
    if form.get("confirm", "") != text:
        raise Refused("type the version's number again to confirm")
    reason = form.get("reason", "").strip()
    if not reason:
        raise Refused("say why the change is cancelled (reason)")
    check_text(reason, "reason", "reason")
    async with writing(request) as conn:
        result = await cancel_change(conn, actor, int(text), reason)
    return render(
        request,
        "message.html",
        title="Done",
        message=f"market version {text} cancelled: audit row {result['audit_id']} by {actor}",
    )


async def claims_json(request: Request) -> Response:
    async with reading(request) as conn:
        return json_response(await claims_state(conn))


async def favicon(request: Request) -> Response:
    return Response(status_code=204)


# -- the app ------------------------------------------------------------------------------------
def create_app(
    settings: Settings,
    *,
    enable_actions: bool = False,
    refresh_s: float = 5.0,
    allowed_hosts: list[str] | None = None,
    redis: bool = True,
    heartbeat: bool = True,
) -> Starlette:
    """The console for `settings`' database (and its Redis for the queue depth, unless
    redis=False). allowed_hosts: the Host headers served (DNS rebinding: another site's name
    resolving to 127.0.0.1 is refused); default the loopback names. heartbeat: the console's row
    in sim_processes, written on a one-connection pool of its own (the only write a read-only
    console makes: its pages' pool stays read-only)."""
    console = Console(settings, enable_actions, refresh_s)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from store.runs import deployment_id
        from workers.heartbeat import Heartbeat

        beats: Pool | None = None
        beat: Heartbeat | None = None
        beat_task: asyncio.Task[None] | None = None
        # Planned at each request, never from a cached plan: the console's reads take no
        # parameters, so Postgres keeps a prepared statement's first plan, and one made while
        # trades was small walked it whole once the engine had filled it (4 s per overview).
        # Its traffic is a few requests a second; planning costs a few ms. No JIT either: the
        # estimated costs of its index probes cross jit_above_cost, and compiling took 0.8 s.
        console.pool = await create_pool(
            settings.database_url,
            min_size=1,
            max_size=4,
            read_only=not enable_actions,
            jit=False,
            statement_cache_size=0,
        )
        try:
            async with console.pool.acquire() as conn:
                console.queue_name = settings.queue_name(await deployment_id(conn))
            if redis:
                from redis.asyncio import Redis

                console.redis = Redis.from_url(settings.redis_url, socket_timeout=1.0)
            if heartbeat:
                beats = await create_pool(settings.database_url, min_size=1, max_size=1)
                beat = Heartbeat("console", queue=console.queue_name)
                beat_task = asyncio.create_task(beat.run(beats))
            yield
        finally:
            if beats is not None:
                if beat is not None and beat_task is not None:
                    await beat.stop(beat_task, beats)
                await beats.close()
            if console.redis is not None:
                await console.redis.aclose()
            await console.pool.close()

    static = StaticFiles(packages=[("console", "static")])
    routes = [
        Route("/", overview_page),
        Route("/api/overview", overview_json),
        Route("/api/claims", claims_json),
        Route("/users", users_page),
        Route("/users/{user_id}", user_detail),
        Route("/api/users/{user_id}/series", user_series),
        Route("/failing", failing_page),
        Route("/audit", audit_log),
        Route("/withdrawals", withdrawals_queue),
        Route("/readers", readers_page),
        Route("/market", market_page),
        Route("/api/market/prices", market_prices),
        Route("/actions/readers", reader_drop, methods=["POST"]),
        Route("/actions/withdrawals/{withdrawal_id}", withdrawal_apply, methods=["POST"]),
        Route("/actions/bulk", bulk_preview, methods=["GET"]),
        Route("/actions/bulk", bulk_apply, methods=["POST"]),
        Route("/actions/claims", claims_apply, methods=["POST"]),
        Route("/actions/market/cancel", market_cancel, methods=["POST"]),
        Route("/favicon.ico", favicon),
        Mount("/static", static, name="static"),
    ]
    hosts = allowed_hosts or ["127.0.0.1", "localhost", "[::1]"]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
            Middleware(BaseHTTPMiddleware, dispatch=guard),
        ],
        lifespan=lifespan,
    )
    app.state.console = console
    return app
