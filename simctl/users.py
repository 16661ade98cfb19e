"""simctl users: create, show, list and steer users. Every change needs an admin key and writes
admin_audit with the key's fingerprint (never the key) in the same transaction as the change."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from simctl.common import Exit, KeyOpt, admin_fingerprint, out, print_json, run_async, settings
from simctl.fmt import plain, print_table
from store.db import Conn, connection

if TYPE_CHECKING:
    from store.bulk import Change
    from store.users import UserListing

app = typer.Typer(
    help="Create, show, list and steer users. USER is a numeric id or an email.\n\n"
    "Every change needs an admin key (SIM_ADMIN_KEY or --admin-key-file PATH) whose SHA-256 is in "
    "SIM_ADMIN_KEYS_SHA256, and is audited.",
    no_args_is_help=True,
)
# `-1` as a USER (or `-5` as an amount) must reach parse_user/parse_amount, which refuse it in
# words, not click's option parser ("No such option: -1"); --help and every option still work.
NEGATIVE_OK: dict[str, Any] = {"ignore_unknown_options": True}
UserArg = Annotated[str, typer.Argument(metavar="USER", help="User id or email.")]


def _change(
    user: str, key: Path | None, action: Callable[[Conn, str, int], Awaitable[Any]]
) -> None:
    s = settings()
    actor = admin_fingerprint(s, key)

    async def go() -> Any:
        from store.users import resolve_user

        async with connection(s.database_url) as conn:
            uid = await resolve_user(conn, user)
            return await action(conn, actor, uid)

    result = run_async(go)
    print_json(result)


@app.command()
def create(
    email: Annotated[
        str, typer.Argument(metavar="EMAIL", help="Email (stored lower-case, unique in any case).")
    ],
    name: Annotated[str, typer.Option("--name", help="Full name.")] = "",
    deposit: Annotated[str, typer.Option("--deposit", help="Opening deposit in USD.")] = "0",
    enable: Annotated[bool, typer.Option("--enable/--no-enable", help="Simulation on.")] = True,
    interval_s: Annotated[
        int,
        typer.Option("--interval-s", min=1, max=2_147_483_647, help="Seconds between runs."),
    ] = 300,
    strategy: Annotated[
        str | None, typer.Option("--strategy", help="random, rebalance, dca, momentum.")
    ] = None,
    admin_key: KeyOpt = None,
) -> None:
    """Create a user with a portfolio row and an opening deposit (ledger row included).

    Example:

    \b
      simctl users create ana@example.com --name "Ana Silva" --deposit 2500
    """
    from engine.values import parse_amount
    from store.users import create_user

    s = settings()
    actor = admin_fingerprint(s, admin_key)

    async def go() -> int:
        # No opening deposit unless one is asked for; one that is asked for must be valid.
        amount = Decimal(0) if deposit.strip() in ("", "0") else parse_amount(deposit, "deposit")
        async with connection(s.database_url) as conn:
            return await create_user(conn, actor, email, name, amount, enable, interval_s, strategy)

    uid = run_async(go)
    print_json({"id": uid})


@app.command(context_settings=NEGATIVE_OK)
def show(user: UserArg) -> None:
    """Balances, holdings, value, P&L and the last runs. P&L (pnl_usd) is sim_pnl's: cash and
    holdings at the latest prices minus net contributions (deposits, withdrawals, adjustments,
    crypto moved in or out valued when it moved), so moving money is never a gain or a loss.

    Example:

    \b
      simctl users show ana@example.com
    """
    s = settings()

    async def go() -> dict[str, Any]:
        from store.users import resolve_user, show_user

        async with connection(s.database_url) as conn:
            return await show_user(conn, await resolve_user(conn, user))

    print_json(run_async(go))


@app.command("list")
def list_(
    search: Annotated[
        str | None, typer.Option("--search", help="Part of an email or name (% and _ are literal).")
    ] = None,
    enabled: Annotated[
        bool | None, typer.Option("--enabled/--disabled", help="Filter on sim_enabled.")
    ] = None,
    paused: Annotated[
        bool | None, typer.Option("--paused/--running", help="Filter on sim_paused.")
    ] = None,
    deleted: Annotated[
        bool, typer.Option("--include-deleted", help="Also soft-deleted users.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    failing: Annotated[
        bool,
        typer.Option(
            "--failing",
            help="Only users whose last run failed (still retrying, or auto-paused), with since "
            "when and the reason (the last error). Pages by id: --offset is the last id seen.",
        ),
    ] = False,
) -> None:
    """List users, filtered and paged.

    Examples:

    \b
      simctl users list --search silva --paused --limit 20
      simctl users list --failing
    """
    s = settings()
    if failing:
        _list_failing(s, limit, offset, as_json)
        return

    async def go() -> list[UserListing]:
        from store.users import list_users

        async with connection(s.database_url) as conn:
            return await list_users(conn, search, enabled, paused, deleted, limit, offset)

    rows = run_async(go)
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print(
            "no users match" if search or enabled is not None or paused is not None else "no users",
            markup=False,
        )
        return
    table = [("ID", "EMAIL", "NAME", "BALANCE_USD", "VALUE_USD", "STRATEGY", "STATE")]
    for r in rows:
        state = (
            "deleted"
            if r["deleted"]
            else "paused"
            if r["sim_paused"]
            else "on"
            if r["sim_enabled"]
            else "off"
        )
        table.append(
            (
                str(r["id"]),
                r["email"],
                r["full_name"] or "-",
                plain(r["balance_usd"]),
                plain(r["portfolio_value_usd"]),
                r["sim_strategy"] or "(default)",
                state,
            )
        )
    print_table(table, right=(0, 3, 4))
    if len(rows) == limit:
        out.print(
            f"(first {limit} from offset {offset}; --offset {offset + limit} for more)",
            markup=False,
        )


def _flag_command(name: str, doc: str, **flags: Any) -> None:
    def command(user: UserArg, admin_key: KeyOpt = None) -> None:
        from store.users import set_flags

        _change(user, admin_key, lambda c, a, u: set_flags(c, a, name, u, **flags))

    command.__doc__ = doc
    app.command(name, context_settings=NEGATIVE_OK)(command)


_flag_command(
    "enable", "Switch simulation on.\n\nExample:\n\n\b\n  simctl users enable 42", enabled=True
)
_flag_command(
    "disable", "Switch simulation off.\n\nExample:\n\n\b\n  simctl users disable 42", enabled=False
)
_flag_command(
    "pause",
    "Pause simulation (keeps it enabled).\n\nExample:\n\n\b\n  simctl users pause 42",
    paused=True,
)
_flag_command(
    "resume",
    "Resume a paused user (also one auto-paused after failures).\n\nExample:\n\n\b\n  simctl users resume 42",
    paused=False,
)


@app.command("set-interval", context_settings=NEGATIVE_OK)
def set_interval(
    user: UserArg,
    seconds: Annotated[
        int,
        typer.Argument(metavar="SECONDS", min=1, max=2_147_483_647, help="Seconds between runs."),
    ],
    admin_key: KeyOpt = None,
) -> None:
    """Change the seconds between a user's runs (from the next slot on).

    Example:

    \b
      simctl users set-interval 42 600
    """
    from store.users import set_flags

    _change(user, admin_key, lambda c, a, u: set_flags(c, a, "set_interval", u, interval_s=seconds))


@app.command("set-strategy", context_settings=NEGATIVE_OK)
def set_strategy(
    user: UserArg,
    name: Annotated[
        str, typer.Argument(metavar="STRATEGY", help="random, rebalance, dca or momentum.")
    ],
    params: Annotated[
        str, typer.Option("--params", help="Strategy parameters as a JSON object.")
    ] = "{}",
    admin_key: KeyOpt = None,
) -> None:
    """Choose what a user's runs trade. A strategy decides orders, never prices or outcomes.

    Example:

    \b
      simctl users set-strategy 42 dca --params '{"usd": "50", "assets": ["BTC"]}'
    """
    from store.users import set_flags

    try:
        parsed = json.loads(params)
    except json.JSONDecodeError as exc:
        raise Exit(2, f"--params is not JSON: {exc.msg}") from None
    if not isinstance(parsed, dict):
        raise Exit(2, "--params must be a JSON object")
    _change(
        user,
        admin_key,
        lambda c, a, u: set_flags(c, a, "set_strategy", u, strategy=name, params=parsed),
    )


@app.command(context_settings=NEGATIVE_OK)
def deposit(
    user: UserArg,
    amount: Annotated[
        str, typer.Argument(metavar="AMOUNT", help="USD, positive, at most 8 decimals.")
    ],
    admin_key: KeyOpt = None,
) -> None:
    """Credit USD with a completed deposit transaction.

    Example:

    \b
      simctl users deposit 42 1000.50
    """
    from engine.values import parse_amount
    from store.moves import move_usd

    value = parse_amount(amount, "amount")
    _change(user, admin_key, lambda c, a, u: move_usd(c, a, u, value, "deposit", None))


@app.command(context_settings=NEGATIVE_OK)
def adjust(
    user: UserArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (required, audited).")],
    usd: Annotated[str | None, typer.Option("--usd", help="Signed USD change.")] = None,
    asset: Annotated[str | None, typer.Option("--asset", help="Asset of a holding change.")] = None,
    amount: Annotated[str | None, typer.Option("--amount", help="Signed holding change.")] = None,
    admin_key: KeyOpt = None,
) -> None:
    """Audited correction of the USD balance (--usd) or of one holding (--asset and --amount).

    Examples:

    \b
      simctl users adjust 42 --usd -12.5 --reason "duplicate deposit"
      simctl users adjust 42 --asset BTC --amount 0.01 --reason "airdrop"
    """
    from engine.values import parse_amount, parse_asset, parse_text
    from store.moves import adjust_holding, move_usd

    if not reason.strip():
        raise Exit(2, "--reason must not be empty")
    parse_text(reason, "--reason", "reason")
    if (usd is None) == (asset is None):
        raise Exit(2, "give either --usd, or --asset with --amount")
    if usd is not None:
        value = parse_amount(usd, "--usd", signed=True)
        _change(user, admin_key, lambda c, a, u: move_usd(c, a, u, value, "adjustment", reason))
        return
    if amount is None:
        raise Exit(2, "--asset needs --amount")
    checked = parse_asset(asset or "")
    delta = parse_amount(amount, "--amount", signed=True)
    _change(user, admin_key, lambda c, a, u: adjust_holding(c, a, u, checked, delta, reason))


@app.command(context_settings=NEGATIVE_OK)
def delete(user: UserArg, admin_key: KeyOpt = None) -> None:
    """Soft-delete a user (deleted_at is set; rows are kept; simulation stops).

    Example:

    \b
      simctl users delete ana@example.com
    """
    from store.users import soft_delete

    _change(user, admin_key, soft_delete)


def _list_failing(s: Any, limit: int, after_id: int, as_json: bool) -> None:
    async def go() -> list[dict[str, Any]]:
        from store.console import failing_users

        async with connection(s.database_url) as conn:
            return await failing_users(conn, after_id, limit)

    rows = run_async(go)
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("no user is failing", markup=False)
        return
    table = [("ID", "EMAIL", "FAILING_SINCE", "FAILURES", "STATE", "REASON")]
    for r in rows:
        since = r["sim_failing_since"]
        state = (
            "auto-paused"
            if r["sim_paused"]
            else f"retry after {r['sim_claimed_until'].isoformat(timespec='seconds')}"
            if r["sim_claimed_until"]
            else "retrying"
        )
        table.append(
            (
                str(r["id"]),
                r["email"],
                since.isoformat(timespec="seconds") if since else "-",
                str(r["sim_fail_count"]),
                state,
                (r["last_error"] or "-").replace("\n", " "),
            )
        )
    print_table(table, right=(0, 3))
    if len(rows) == limit:
        out.print(f"(first {limit}; --offset {rows[-1]['id']} for more)", markup=False)


# -- changes to every user a filter matches (store.bulk; the console's actions too) -------------
StateOpt = Annotated[
    str,
    typer.Option(
        "--state",
        help="all, failing, paused, auto_paused, inactive, disabled or running.",
    ),
]
StrategyFilter = Annotated[
    str | None,
    typer.Option("--strategy", help="Only users of this strategy ('default' for none set)."),
]
UserFilterOpt = Annotated[int | None, typer.Option("--user", min=1, help="Only this user id.")]
ExpectOpt = Annotated[
    int | None,
    typer.Option(
        "--expect",
        min=0,
        help="Apply, if the filter still matches exactly this many users to change (the dry "
        "run's count). Without it: a dry run that changes nothing.",
    ),
]


def _bulk(
    change: Change,
    state: str,
    strategy: str | None,
    user: int | None,
    expect: int | None,
    key: Path | None,
    to: str | None = None,
    params: dict[str, Any] | None = None,
) -> None:
    from store.bulk import STATES, UserFilter, apply_change, count_change

    if state not in STATES:
        raise Exit(2, f"--state must be one of {', '.join(STATES)}, got {state!r}")
    flt = UserFilter(state, strategy, user)
    s = settings()
    actor = admin_fingerprint(s, key) if expect is not None else None

    async def go() -> dict[str, Any]:
        async with connection(s.database_url) as conn:
            if actor is None:
                n = await count_change(conn, flt, change)
                return {"dry_run": True, "would_change": n, "filter": flt.describe()}
            assert expect is not None
            return await apply_change(
                conn,
                actor,
                flt,
                change,
                expect,
                strategy=to,
                params=params,
            )

    result = run_async(go)
    print_json(result)
    if result.get("dry_run"):
        out.print(
            f"(dry run: nothing changed; add --expect {result['would_change']} to apply)",
            markup=False,
        )


@app.command("bulk-pause")
def bulk_pause(
    state: StateOpt = "all",
    strategy: StrategyFilter = None,
    user: UserFilterOpt = None,
    expect: ExpectOpt = None,
    admin_key: KeyOpt = None,
) -> None:
    """Pause every user a filter matches: a dry run, then --expect COUNT applies it (refused,
    nothing changed, if the count has changed). One audit row lists the users.

    Example:

    \b
      simctl users bulk-pause --strategy momentum            # dry run: prints the count
      simctl users bulk-pause --strategy momentum --expect 120
    """
    _bulk("pause", state, strategy, user, expect, admin_key)


@app.command("bulk-resume")
def bulk_resume(
    state: StateOpt = "all",
    strategy: StrategyFilter = None,
    user: UserFilterOpt = None,
    expect: ExpectOpt = None,
    admin_key: KeyOpt = None,
) -> None:
    """Resume every paused user a filter matches (auto-paused ones too: their failures are
    cleared): a dry run, then --expect COUNT applies it.

    Example:

    \b
      simctl users bulk-resume --state auto_paused --expect 3
    """
    _bulk("resume", state, strategy, user, expect, admin_key)


@app.command("bulk-set-strategy")
def bulk_set_strategy(
    name: Annotated[
        str, typer.Argument(metavar="STRATEGY", help="random, rebalance, dca or momentum.")
    ],
    params: Annotated[
        str, typer.Option("--params", help="Strategy parameters as a JSON object.")
    ] = "{}",
    state: StateOpt = "all",
    strategy: StrategyFilter = None,
    user: UserFilterOpt = None,
    expect: ExpectOpt = None,
    admin_key: KeyOpt = None,
) -> None:
    """Set the strategy of every user a filter matches: a dry run, then --expect COUNT.

    Example:

    \b
      simctl users bulk-set-strategy dca --strategy default --expect 500
    """
    try:
        parsed = json.loads(params)
    except json.JSONDecodeError as exc:
        raise Exit(2, f"--params is not JSON: {exc.msg}") from None
    if not isinstance(parsed, dict):
        raise Exit(2, "--params must be a JSON object")
    _bulk("set_strategy", state, strategy, user, expect, admin_key, to=name, params=parsed)
