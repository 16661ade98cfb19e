"""simctl: every operator command. Exit codes: 0 success, 1 check failed or refused, 2 bad usage
or configuration. Every refusal is one line on stderr.

Imports are lazy (inside each command): a short command such as `simctl run` loads only what it
uses, so an operator's script calling it in a loop does not take a core from the engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer._click import exceptions as click_exc  # typer vendors click; pinned in constraints.txt

from simctl.common import Exit, err, exit_for, out, print_json, run_async, settings
from simctl.fmt import plain
from simctl.market import run_priced

app = typer.Typer(
    name="simctl",
    help="Operate simengine, the paper-trading simulation engine. "
    "Configuration comes from the environment (DATABASE_URL, REDIS_URL, SIM_*) and .env.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


_GROUPS = ("market", "users", "withdrawals", "prices", "report")
_registered: set[str] = set()


def _register(only: str | None = None) -> None:
    """Add the command groups kept in their own modules: all of them, or only the one a command
    line names (each costs its imports)."""
    for name in _GROUPS if only is None else (only,):
        if name in _registered:
            continue
        _registered.add(name)
        if name == "market":
            from simctl import market

            app.add_typer(market.app, name="market")
        elif name == "users":
            from simctl import users

            app.add_typer(users.app, name="users")
        elif name == "withdrawals":
            from simctl import withdrawals

            app.add_typer(withdrawals.app, name="withdrawals")
        elif name == "prices":
            from simctl import prices

            app.add_typer(prices.app, name="prices")
        else:
            from simctl import report

            app.command("report")(report.report)


# -- migrate ----------------------------------------------------------------------------------
@app.command()
def migrate(
    plan: Annotated[
        bool,
        typer.Option(
            "--plan",
            help="Print the statements it would run and the legacy rows it would report; change nothing.",
        ),
    ] = False,
) -> None:
    """Apply pending migrations; running it again changes nothing.

    On a database that already holds the platform's tables (restored from its backup) it adopts
    them: checks every column the engine uses (refuses an incompatible one, exit 1, nothing
    changed), adds only what is missing, never rewrites a legacy row, records each user's opening
    balance and holdings as the ledger's baseline, builds indexes CONCURRENTLY and reports legacy
    rows that break a rule it adds. Every statement waits at most SIM_MIGRATE_LOCK_TIMEOUT_MS for
    a lock and is tried SIM_MIGRATE_ATTEMPTS times. Refuses (exit 1) when an applied migration's
    file has changed since. The first migrate stores
    the market definition (SIM_SEED and the market settings when set, else the defaults and a
    random seed); later, a market setting that differs from it exits 2.

    Examples:

      simctl migrate --plan

      simctl migrate
    """
    s = settings()

    async def go() -> Any:
        from store.db import connection
        from store.market import ensure_market
        from store.migrate import LockPolicy
        from store.migrate import migrate as do_migrate

        policy = LockPolicy(s.sim_migrate_lock_timeout_ms, s.sim_migrate_attempts)
        async with connection(s.database_url) as conn:
            report = await do_migrate(conn, policy=policy, plan_only=plan)
            stored = False
            if not plan:
                _, stored = await ensure_market(conn, s)
            return report, stored

    report, stored = run_priced(go)
    if plan:
        for note in report.notes:
            out.print(f"-- {note}", markup=False)
        for statement in report.plan:
            out.print(statement, markup=False)
        for rows in report.legacy:
            out.print(f"-- {rows}", markup=False)
        out.print(
            f"-- plan: {len(report.applied)} migration(s) to apply; nothing was changed",
            markup=False,
        )
        return
    if report.adopted_users is not None:
        out.print(
            f"adopted the platform's tables: baseline of {report.adopted_users} user(s); "
            f"locks that hold back writes to users were held for {report.users_lock_ms:.0f} ms"
        )
    for rows in report.legacy:
        out.print(str(rows), markup=False)
    for note in report.notes:
        out.print(note, markup=False)
    if stored:
        out.print("stored the market definition (simctl market show)")
    if report.applied:
        out.print(f"applied {len(report.applied)} migration(s): {', '.join(report.applied)}")
    else:
        out.print(f"up to date ({len(report.already)} migration(s) applied)")


# -- seed-demo --------------------------------------------------------------------------------
@app.command("seed-demo")
def seed_demo(
    users: Annotated[
        int, typer.Option("--users", min=1, max=10_000_000, help="How many demo users.")
    ],
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seed of the generated names and deposits.")
    ] = 1,
    interval_s: Annotated[
        int,
        typer.Option(
            "--interval-s",
            min=1,
            max=2_147_483_647,
            help="Their sim_interval_s; first slots spread over it.",
        ),
    ] = 300,
) -> None:
    """Create N demo users with a deposit, a portfolio row and simulation on.

    Each user's balance is explained by one completed deposit transaction; first slots are spread
    over the next interval so the load is smooth. All users are created in one transaction.

    Example:

    \b
      simctl seed-demo --users 10000 --seed 7
    """
    s = settings()

    async def go() -> int:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        from store.db import connection
        from store.seed import seed_demo as do_seed

        async with connection(s.database_url) as conn:
            with Progress(
                TextColumn("seeding"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
                console=err.get(),
                transient=True,
            ) as progress:
                task = progress.add_task("seed", total=users)
                return await do_seed(
                    conn, users, seed, interval_s, lambda n: progress.advance(task, n)
                )

    created = run_async(go)
    out.print(f"created {created} demo user(s)")


# -- processes --------------------------------------------------------------------------------
@app.command()
def scheduler(
    once: Annotated[bool, typer.Option("--once", help="Do one pass and exit.")] = False,
) -> None:
    """Lease due users and enqueue their slots on Redis (runs until SIGTERM/SIGINT).

    Several schedulers at once are safe: claims use FOR UPDATE SKIP LOCKED and a lease in Postgres.
    Waits out Postgres and Redis outages, at start too (postgres.unavailable, redis.unavailable);
    exits 2 at start only for configuration (credentials, database, schema, privileges, a busy
    SIM_METRICS_PORT). --once does not wait: exit 2 with one line if either is away.

    Example:

    \b
      simctl scheduler --once
    """
    s = settings()

    async def go() -> None:
        from workers.logs import configure_logging
        from workers.scheduler import run_scheduler

        configure_logging(s)
        await run_scheduler(s, once)

    run_async(go)


@app.command()
def worker(
    burst: Annotated[bool, typer.Option("--burst", help="Exit when the queue is empty.")] = False,
) -> None:
    """Run an arq worker that applies batches of runs (graceful stop on SIGTERM).

    Waits out Postgres and Redis outages, at start too, and comes back with them; exits 2 at
    start only for configuration. --burst does not wait: exit 2 with one line if either is away.

    Example:

    \b
      simctl worker --burst
    """
    s = settings()
    from workers.logs import configure_logging
    from workers.process import run_worker

    configure_logging(s)
    try:
        run_worker(s, burst=burst)
    except Exception as exc:
        mapped = exit_for(exc)
        if mapped is None:
            raise
        raise mapped from None


# -- run --------------------------------------------------------------------------------------
@app.command()
def run(
    user: Annotated[str, typer.Argument(help="User id or email.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the run and print it.")] = False,
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", min=0.1, help="How long --wait waits.")
    ] = 60.0,
) -> None:
    """Make a user due now and enqueue that slot; the slot still runs at most once.

    Refuses (exit 1) a user who is disabled, paused, deactivated or deleted, and (exit 2) when
    Redis does not answer; a refused run changes nothing. Never sets or extends the user's lease,
    so a job lost earlier still comes back when that lease ends. With --wait, prints the run's
    outcome and trades once a worker has applied it (exit 1 if it does not within the timeout).

    Example:

    \b
      simctl run 42 --wait
    """
    s = settings()

    async def go() -> dict[str, Any] | None:
        from redis.exceptions import RedisError

        from store.db import connection
        from store.errors import Refused
        from store.ops import make_due_now, resolve_user, run_of_slot
        from store.runs import Claim, deployment_id
        from workers.enqueue import connect_redis, encode_claims, enqueue_batch, redis_error

        # Redis first: a run refused for want of Redis changes nothing in Postgres.
        redis = await connect_redis(s)
        try:
            async with connection(s.database_url) as conn:
                uid = await resolve_user(conn, user)
                queue: asyncio.Queue[str] = asyncio.Queue()
                await conn.add_listener("sim_run", lambda *a: queue.put_nowait(a[3]))
                slot, lease_until = await make_due_now(conn, uid)
                ids, slots = encode_claims([Claim(uid, slot)])
                deployment = await deployment_id(conn)
                try:
                    await enqueue_batch(
                        redis, s.queue_name(deployment), deployment, ids, slots, None, lease_until
                    )
                except (OSError, RedisError) as exc:
                    # The slot is due now: a scheduler enqueues it once Redis answers (after
                    # the user's lease, if one is live).
                    raise redis_error(s, exc) from None
                err.print(f"user {uid}: slot {slot.isoformat()} enqueued")
                if not wait:
                    return None
                deadline = asyncio.get_running_loop().time() + timeout_s
                while True:
                    found = await run_of_slot(conn, uid, slot)
                    if found is not None:
                        return found
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        raise Refused(
                            f"user {uid}: no run for slot {slot.isoformat()} within {timeout_s} s"
                        )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(queue.get(), min(remaining, 1.0))
        finally:
            await redis.aclose()

    result = run_async(go)
    if result is not None:
        print_json(result)


# -- status / reconcile -----------------------------------------------------------------------
@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    watch: Annotated[
        float | None, typer.Option("--watch", min=0.5, help="Refresh every N seconds until Ctrl-C.")
    ] = None,
) -> None:
    """Due users, oldest lag, queue depth, runs and failures in the last minute and hour,
    auto-pauses, and the last market tick per asset.

    Queue depth counts the jobs really waiting: taken by no worker (a killed worker's jobs are
    not) and enqueued within the last SIM_LEASE_S (a lapsed job's slots are claimed again).

    Examples:

    \b
      simctl status --json
      simctl status --watch 2
    """
    s = settings()

    async def read() -> dict[str, Any]:
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        from store.db import connection
        from store.ops import status as read_status
        from store.runs import deployment_id
        from workers.queue import pending_jobs

        async with connection(s.database_url) as conn:
            data = await read_status(conn)
            queue_name = s.queue_name(await deployment_id(conn))
        client = Redis.from_url(s.redis_url)
        try:
            # Jobs really waiting: a killed worker's jobs and lapsed ones are not counted.
            data["queue_depth"] = await pending_jobs(client, queue_name, s.sim_lease_s)
        except (OSError, RedisError):
            data["queue_depth"] = None
        finally:
            await client.aclose()
        return data

    if as_json:
        print_json(run_async(read))
        return
    if watch is None:
        out.print(_status_table(run_async(read)))
        return
    if not sys.stdout.isatty():
        # Into a file or a pipe: a new block per refresh, each stamped, written as it comes.
        while True:
            data = run_async(read)
            out.print(f"-- {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC", markup=False)
            out.print(_status_table(data))
            sys.stdout.flush()
            time.sleep(watch)
    from rich.live import Live

    with Live(console=out.get(), auto_refresh=False) as live:
        while True:
            live.update(_status_table(run_async(read)), refresh=True)
            time.sleep(watch)


def _status_table(data: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="simengine status", show_header=False)
    ticks = data.pop("last_tick", {}) or {}
    for key, value in data.items():
        shown = plain(value) if isinstance(value, Decimal) else str(value)
        table.add_row(key.replace("_", " "), "-" if value is None else shown)
    for asset, at in sorted(ticks.items()):
        table.add_row(f"last tick {asset}", str(at))
    return table


@app.command()
def reconcile(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    user: Annotated[
        str | None, typer.Option("--user", help="Only this user (id or email); refused if unknown.")
    ] = None,
    legacy: Annotated[
        bool,
        typer.Option(
            "--legacy",
            help="Also report, as information, how far an adopted database's legacy ledger was "
            "from explaining each user's opening balance and holdings.",
        ),
    ] = False,
) -> None:
    """Rebuild every balance and holding from the ledger rows and compare; check every engine
    trade's price against its tick's stored price moved by SIM_SLIPPAGE_BPS, exactly, and every
    portfolio value against the stored prices of the user's last run.

    On an adopted database the ledger is judged from the adoption's baseline on (each user's
    opening balance and holdings). Exit 0 when clean, 1 with each discrepancy named (user,
    field, expected, found). --legacy never changes the exit code.

    Examples:

      simctl reconcile --json

      simctl reconcile --legacy
    """
    s = settings()

    async def go() -> tuple[list[Any], list[dict[str, Any]] | None]:
        from store.db import connection
        from store.ops import legacy_gap, resolve_user, was_adopted
        from store.ops import reconcile as do_reconcile
        from store.prices import audit_prices

        async with connection(s.database_url) as conn:
            uid = None if user is None else await resolve_user(conn, user)
            found = await do_reconcile(conn, uid)
            found += await audit_prices(conn, s.sim_slippage_bps, uid)
            adopted = legacy and await was_adopted(conn)
            # None: never adopted, so no legacy ledger and no opening state to explain.
            gaps = await legacy_gap(conn, uid) if adopted else None
            return found, gaps

    found, gaps = run_async(go)
    if legacy:
        _print_legacy_gaps(gaps, as_json)
    if as_json:
        print_json(
            {
                "clean": not found,
                "discrepancies": [
                    {
                        "user_id": d.user_id,
                        "field": d.field,
                        "expected": d.expected,
                        "found": d.found,
                    }
                    for d in found
                ],
            }
        )
    else:
        for d in found:
            out.print(str(d))
        if not found:
            out.print(
                "clean: every balance and holding matches the ledger, every trade and value "
                "its stored prices"
            )
    if found:
        raise Exit(1, f"reconcile: {len(found)} discrepancy(ies)")


def _print_legacy_gaps(gaps: list[dict[str, Any]] | None, as_json: bool) -> None:
    if as_json:
        print_json({"adopted": gaps is not None, "legacy_unexplained": gaps or []})
        return
    if gaps is None:
        out.print("legacy: this database was never adopted: no legacy ledger to compare")
        return
    if not gaps:
        out.print("legacy: the legacy ledger explains every adopted user's opening state")
        return
    for g in gaps:
        parts = [f"{k} {v}" for k, v in g["gaps"].items()]
        if g["value_unequal"]:
            parts.append("portfolio value unequal")
        out.print(f"legacy: user {g['user_id']}: opening not explained by: {', '.join(parts)}")
    out.print(
        f"legacy: {len(gaps)} adopted user(s) whose opening state the legacy ledger does not "
        "explain (information: reconcile judges from the baseline)"
    )


_register()


def _register_grant_reader() -> None:
    from simctl.reader import grant_reader

    app.command("grant-reader")(grant_reader)


_register_grant_reader()


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes: a smoke run of a few minutes.")
    ] = False,
    pinned: Annotated[
        bool,
        typer.Option(
            "--pinned",
            help="Also measure the pinned shape: a private Postgres cluster (initdb, the "
            "server's settings) on one core, everything else on the others. Needs 2 cores.",
        ),
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the result as JSON here.")
    ] = None,
    docs: Annotated[
        bool,
        typer.Option(
            "--docs/--no-docs",
            help="Append the table to docs/benchmarks.md (run from the checkout's root). "
            "Off by default: a run edits nothing.",
        ),
    ] = False,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            min=1,
            help="Instead of the benchmark: run this many due users one batch at a time on one "
            "connection and print each statement's server and client CPU per run.",
        ),
    ] = None,
) -> None:
    """The end-to-end benchmark: simengine's user-runs/s (best of three peaks) against the
    database's own ceiling (simtools/bench/ceiling.pgb under pgbench), pgbench TPC-B and the naive
    design, all measured in this run on this machine; then lag at half of peak, claim time by
    population, worker RSS, CPU per run by process (Postgres's and the Python side's against
    the ceiling's Postgres CPU per run), and reconcile. Creates and drops its own databases next
    to DATABASE_URL's; uses REDIS_URL.

    --pinned then measures the ceiling, TPC-B, the naive design and the engine again in the
    deployment's shape: a private cluster with the server's settings, its postmaster under
    `taskset` on the first core, and pgbench, the scheduler, the workers and a private
    redis-server on the others. The table gives both shapes side by side and every floor, met
    or not. SIMENGINE_BENCH_CEILING runs another ceiling script. Exit 1 if a ledger does not
    reconcile; 2 if a tool is missing, or for --pinned on fewer than 2 cores.

    Examples (the last: where a run's CPU goes, statement by statement):

    \b
      simctl bench --quick --json bench.json
      simctl bench --pinned --docs
      simctl bench --steps 50000
    """
    s = settings()
    from simtools.bench.pinned import refusal
    from simtools.bench.plan import CEILING_ENV, ceiling_file
    from simtools.bench.procs import BenchError

    bench_docs = Path("docs/benchmarks.md")  # the checkout's, from its root (scripts/bench)

    def say(message: str) -> None:
        err.print(f"bench: {message}", markup=False)

    if steps is not None:
        if pinned or quick or docs:
            raise Exit(
                2,
                "bench: --steps profiles on DATABASE_URL's server alone; it takes no --pinned, --quick or --docs",
            )
        from simtools.bench.steps import run_steps, steps_table

        try:
            profile = run_async(lambda: run_steps(s, steps, say))
        except BenchError as exc:
            raise Exit(2, f"bench: {exc}") from None
        out.print(steps_table(profile), markup=False)
        if json_out is not None:
            json_out.write_text(json.dumps(profile.as_json(), indent=2), encoding="utf-8")
        if not profile.reconcile.clean:
            raise Exit(1, "bench: the ledger does not reconcile after the run")
        return

    if not ceiling_file().is_file():
        raise Exit(2, f"bench: no ceiling script at {ceiling_file()} (set {CEILING_ENV})")
    if docs and not bench_docs.is_file():
        raise Exit(
            2,
            "bench: no docs/benchmarks.md here to append to (run from the checkout's root, or leave out --docs)",
        )
    if pinned and (reason := refusal()) is not None:
        raise Exit(2, f"bench: {reason}")
    from simtools.bench.procs import pgbench_binary
    from simtools.bench.report import markdown
    from simtools.bench.run import run_bench

    command = "simctl bench" + (" --quick" if quick else "") + (" --pinned" if pinned else "")
    try:
        pgbench_binary()
        result = run_async(
            lambda: run_bench(s, quick=quick, pinned=pinned, command=command, say=say)
        )
    except BenchError as exc:
        raise Exit(2, f"bench: {exc}") from None
    table = markdown(result)
    out.print(table, markup=False)
    if json_out is not None:
        json_out.write_text(json.dumps(result.as_json(), indent=2), encoding="utf-8")
    if docs:
        with bench_docs.open("a", encoding="utf-8") as fh:
            fh.write(table)
    if not result.clean:
        raise Exit(1, "bench: the ledger does not reconcile after the run")


def fail(code: int, message: str) -> NoReturn:
    err.print(f"simctl: {message}", markup=False)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: click's usage errors and our own become one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    group = _command_line_group(args)
    if group != "":
        _register(group)
    try:
        result = app(args=args or ["--help"], standalone_mode=False)
    except click_exc.UsageError as exc:
        fail(2, f"error: {exc.format_message()} (see --help)")
    except click_exc.ClickException as exc:
        fail(exc.exit_code, f"error: {exc.format_message()}")
    except (typer.Abort, KeyboardInterrupt):
        fail(130, "interrupted")
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exit as exc:
        fail(exc.code, str(exc))
    except Exception as exc:  # the project's errors raised outside run_async (argument checks)
        mapped = exit_for(exc)
        if mapped is None:
            raise
        fail(mapped.code, str(mapped))
    sys.exit(result if isinstance(result, int) else 0)


def _command_line_group(args: list[str]) -> str | None:
    """The command group a command line names, "" for a top-level command, None if unsure."""
    for arg in args:
        if arg.startswith("-"):
            return None  # an option before the command (e.g. --help): show everything
        if arg in _GROUPS:
            return arg
        top = {
            c.name or (c.callback.__name__.replace("_", "-") if c.callback else "")
            for c in app.registered_commands
        }
        return "" if arg in top else None
    return None


def register_all() -> typer.Typer:
    """The app with every command group (main() registers only what a command line needs):
    for tools and tests that list the commands."""
    _register()
    return app
