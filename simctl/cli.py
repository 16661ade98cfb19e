"""simctl: every operator command. Exit codes: 0 success, 1 check failed or refused, 2 bad usage
or configuration. Every refusal is one line on stderr."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from redis.exceptions import RedisError
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from typer._click import exceptions as click_exc  # typer vendors click; pinned in constraints.txt

from simctl.common import Exit, err, out, print_json, run_async, settings
from simctl.market import require_market, run_priced
from store.errors import Refused, StoreError, Unavailable, first_line

app = typer.Typer(
    name="simctl",
    help="Operate simengine, the paper-trading simulation engine. "
    "Configuration comes from the environment (DATABASE_URL, REDIS_URL, SIM_*) and .env.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _register() -> None:
    from simctl import market, prices, report, users, withdrawals

    app.add_typer(market.app, name="market")
    app.add_typer(users.app, name="users")
    app.add_typer(withdrawals.app, name="withdrawals")
    app.add_typer(prices.app, name="prices")
    app.command("report")(report.report)


# -- migrate ----------------------------------------------------------------------------------
@app.command()
def migrate() -> None:
    """Apply pending migrations from sql/migrations; running it again changes nothing.

    Refuses (exit 1) when an applied migration's file has changed since. The first migrate stores
    the market definition (SIM_SEED and the market settings when set, else the defaults and a
    random seed); later, a market setting that differs from it exits 2.

    Example: simctl migrate
    """
    s = settings()

    async def go() -> None:
        from store.db import connection
        from store.market import ensure_market
        from store.migrate import migrate as do_migrate

        async with connection(s.database_url) as conn:
            report = await do_migrate(conn)
            _, stored = await ensure_market(conn, s)
        if stored:
            out.print("stored the market definition (simctl market show)")
        if report.applied:
            out.print(f"applied {len(report.applied)} migration(s): {', '.join(report.applied)}")
        else:
            out.print(f"up to date ({len(report.already)} migration(s) applied)")

    run_priced(go)


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
            "--interval-s", min=1, help="Their sim_interval_s; first slots spread over it."
        ),
    ] = 300,
) -> None:
    """Create N demo users with a deposit, a portfolio row and simulation on.

    Each user's balance is explained by one completed deposit transaction; first slots are spread
    over the next interval so the load is smooth. All users are created in one transaction.

    Example: simctl seed-demo --users 10000 --seed 7
    """
    s = settings()

    async def go() -> int:
        from store.db import connection
        from store.seed import seed_demo as do_seed

        async with connection(s.database_url) as conn:
            with Progress(
                TextColumn("seeding"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
                console=err,
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

    Example: simctl scheduler --once
    """
    s = settings()
    require_market(s)

    async def go() -> None:
        from workers.logs import configure_logging
        from workers.scheduler import run_scheduler

        configure_logging(s)
        await run_scheduler(s, once)

    run_async(go)


@app.command()
def worker(
    burst: Annotated[bool, typer.Option("--burst", help="Exit when the queue is empty.")] = False,
    naive: Annotated[
        bool, typer.Option("--naive", hidden=True, help="The benchmark's naive baseline.")
    ] = False,
) -> None:
    """Run an arq worker that applies batches of runs (graceful stop on SIGTERM).

    Example: simctl worker --burst
    """
    s = settings()
    require_market(s)
    from workers.logs import configure_logging
    from workers.process import run_worker

    configure_logging(s)
    try:
        run_worker(s, burst=burst, naive=naive)
    except Unavailable as exc:
        raise Exit(2, str(exc)) from None
    except (OSError, ConnectionError, RedisError) as exc:
        raise Exit(2, f"cannot reach Redis or Postgres: {first_line(exc)}") from None


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

    Refuses (exit 1) a user who is disabled, paused, deactivated or deleted. With --wait, prints the
    run's outcome and trades once a worker has applied it (exit 1 if it does not within the timeout).

    Example: simctl run 42 --wait
    """
    s = settings()

    async def go() -> dict[str, Any] | None:
        from arq import create_pool as create_redis
        from arq.connections import RedisSettings

        from store.db import connection
        from store.ops import make_due_now, resolve_user, run_of_slot
        from store.runs import Claim
        from workers.jobs import JOB_NAME, encode_claims, job_id

        async with connection(s.database_url) as conn:
            uid = await resolve_user(conn, user)
            queue: asyncio.Queue[str] = asyncio.Queue()
            await conn.add_listener("sim_run", lambda *a: queue.put_nowait(a[3]))
            slot, lease_until = await make_due_now(conn, uid, s.sim_lease_s)
            try:
                redis = await create_redis(RedisSettings.from_dsn(s.redis_url))
            except (OSError, ConnectionError) as exc:
                raise Unavailable(f"cannot reach Redis: {exc}") from None
            try:
                ids, slots = encode_claims([Claim(uid, slot)])
                await redis.enqueue_job(
                    JOB_NAME,
                    ids,
                    slots,
                    _job_id=job_id(ids, slots, lease_until),
                    _queue_name=s.sim_queue_name,
                )
            finally:
                await redis.aclose()
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

    Example: simctl status --json
    Example: simctl status --watch 2
    """
    s = settings()

    async def read() -> dict[str, Any]:
        from redis.asyncio import Redis

        from store.db import connection
        from store.ops import status as read_status

        async with connection(s.database_url) as conn:
            data = await read_status(conn)
        client = Redis.from_url(s.redis_url)
        try:
            data["queue_depth"] = await client.zcard(s.sim_queue_name)
        except (OSError, ConnectionError):
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
    from rich.live import Live

    with Live(console=out, auto_refresh=False) as live:
        while True:
            live.update(_status_table(run_async(read)), refresh=True)
            time.sleep(watch)


def _status_table(data: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="simengine status", show_header=False)
    ticks = data.pop("last_tick", {}) or {}
    for key, value in data.items():
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    for asset, at in sorted(ticks.items()):
        table.add_row(f"last tick {asset}", str(at))
    return table


@app.command()
def reconcile(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    user: Annotated[int | None, typer.Option("--user", help="Only this user id.")] = None,
) -> None:
    """Rebuild every balance and holding from the ledger rows and compare; check every engine
    trade's price against its tick's stored price moved by SIM_SLIPPAGE_BPS, exactly, and every
    portfolio value against the stored prices of the user's last run.

    Exit 0 when clean, 1 with each discrepancy named (user, field, expected, found).

    Example: simctl reconcile --json
    """
    s = settings()

    async def go() -> list[Any]:
        from store.db import connection
        from store.ops import reconcile as do_reconcile
        from store.prices import audit_prices

        async with connection(s.database_url) as conn:
            found = await do_reconcile(conn, user)
            return found + await audit_prices(conn, s.sim_slippage_bps, user)

    found = run_async(go)
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


_register()


@app.command("grant-reader")
def grant_reader(
    role: Annotated[
        str, typer.Argument(help="Role name: lower-case letters, digits, underscores.")
    ],
    password: Annotated[
        str | None, typer.Option("--password", help="Set (or change) its login password.")
    ] = None,
) -> None:
    """Create or update a login role that can read the read views (sim_positions, sim_pnl,
    sim_activity, sim_latest_prices, sim_run_log) and nothing else: no table, so no password_hash or tax_id.

    Example: simctl grant-reader analytics --password 's3cret'
    """
    s = settings()

    async def go() -> list[str]:
        from store.db import connection
        from store.reader import grant_reader as do_grant

        async with connection(s.database_url) as conn:
            return await do_grant(conn, role, password)

    views = run_async(go)
    out.print(f"role {role} can read: {', '.join(views)}")


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes: under two minutes (CI smoke).")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the result as JSON here.")
    ] = None,
    docs: Annotated[
        bool, typer.Option("--docs/--no-docs", help="Append a table to docs/benchmarks.md.")
    ] = True,
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
    database's own ceiling (shared/bench/ceiling.pgb under pgbench), pgbench TPC-B and the naive
    design, all measured in this run on this machine; then lag at half of peak, claim time by
    population, worker RSS, CPU per run by process, and reconcile. Creates and drops its own
    databases next to DATABASE_URL's; uses REDIS_URL. Exit 1 if the ledger does not reconcile.

    Example: simctl bench --quick --json bench.json

    Example (where a run's CPU goes, statement by statement): simctl bench --steps 50000
    """
    s = settings()
    from simctl.bench import markdown, run_bench, run_steps

    if steps is not None:
        from simctl.benchsteps import steps_table

        profile = run_async(
            lambda: run_steps(s, steps, lambda m: err.print(f"bench: {m}", markup=False))
        )
        out.print(steps_table(profile), markup=False)
        if json_out is not None:
            json_out.write_text(json.dumps(profile, indent=2), encoding="utf-8")
        if not profile["reconcile"]["clean"]:
            raise Exit(1, "bench: the ledger does not reconcile after the run")
        return

    result = run_async(
        lambda: run_bench(s, quick, lambda m: err.print(f"bench: {m}", markup=False))
    )
    table = markdown(result, "simctl bench" + (" --quick" if quick else ""))
    out.print(table, markup=False)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    if docs:
        path = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
        with path.open("a", encoding="utf-8") as fh:
            fh.write(table)
    if not result["engine"]["reconcile"]["clean"]:
        raise Exit(1, "bench: the ledger does not reconcile after the run")


def fail(code: int, message: str) -> NoReturn:
    err.print(f"simctl: {message}", markup=False)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: click's usage errors and our own become one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
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
    except Unavailable as exc:  # raised outside run_async, e.g. while checking arguments
        fail(2, str(exc))
    except StoreError as exc:  # a refusal (bad amount, unknown asset, ...) outside run_async
        fail(1, str(exc))
    sys.exit(result if isinstance(result, int) else 0)
