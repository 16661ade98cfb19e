"""simctl bench: the end-to-end benchmark (the bench package, imported when it runs)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from simctl.common import Exit, err, out, run_async, settings

# The history bench's --checkpoint-rows default: Settings' SIM_CHECKPOINT_ROWS default (a unit
# test holds them equal; simconfig is not imported at a command's start).
_CHECKPOINT_ROWS = 1_000_000


def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes: a smoke run of a few minutes.")
    ] = False,
    pinned: Annotated[
        bool,
        typer.Option(
            "--pinned",
            help="Also measure the pinned shape: a private Postgres cluster (initdb, the "
            "server's settings) on one core, everything else on the others (with --history: "
            "run the history bench in that shape instead). Needs 2 cores.",
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
    history: Annotated[
        bool,
        typer.Option(
            "--history",
            help="Instead of the benchmark: the history bench (a private cluster with the "
            "server's settings and autovacuum on; the engine and the operators' commands at 0 "
            "and at --runs runs of history, then a soak with retention on). Needs the Postgres "
            "server binaries and redis-server.",
        ),
    ] = False,
    runs: Annotated[
        str,
        typer.Option("--runs", help="--history: history to fill, in runs (10M, 500k or 200000)."),
    ] = "10M",
    mid_runs: Annotated[
        str | None,
        typer.Option(
            "--mid-runs",
            help="--history: a middle point, in runs (default 1M when --runs is more, else "
            "none; 0: none): the engine stopped there for the same commands as at 0 and N.",
        ),
    ] = None,
    users: Annotated[
        int,
        typer.Option("--users", min=100, help="--history: users running back to back."),
    ] = 100_000,
    measure_s: Annotated[
        float,
        typer.Option(
            "--measure-s", min=1, help="--history: the engine's measured window at 0 and at N."
        ),
    ] = 30.0,
    beside: Annotated[
        int,
        typer.Option(
            "--beside",
            min=0,
            help="--history: windows of the engine alone on an empty database of the same users "
            "holding the history's wallets (each a fresh one), taken in turn with windows on the "
            "history right after N's (history, empty, history, ...); the ratio is the history's "
            "mean over the empty databases', with its spread. 0: none.",
        ),
    ] = 2,
    soak_min: Annotated[
        float,
        typer.Option(
            "--soak-min", min=0, help="--history: minutes of the soak with retention (0: none)."
        ),
    ] = 30.0,
    pg_set: Annotated[
        list[str] | None,
        typer.Option(
            "--pg-set",
            metavar="NAME=VALUE",
            help="--history: a server setting for the private cluster, on top of the ones copied "
            "from the server and the primary's sizing (repeatable), e.g. max_wal_size=1GB to "
            "measure with a development server's WAL room.",
        ),
    ] = None,
    soak_rate: Annotated[
        float,
        typer.Option(
            "--soak-rate",
            min=0,
            help="--history: the soak's runs a second, the users on slots spread over "
            "--users / rate seconds (278: 1,000,000 users on hourly slots; 0: back to back, "
            "the engine flat out).",
        ),
    ] = 278.0,
    checkpoint_s: Annotated[
        float,
        typer.Option("--checkpoint-s", min=1, help="--history: seconds between checkpoints."),
    ] = 60.0,
    checkpoint_rows: Annotated[
        int,
        typer.Option(
            "--checkpoint-rows",
            min=0,
            help="--history: the scheduler's SIM_CHECKPOINT_ROWS (engine rows after the latest "
            "checkpoint's cut that make the next one due; 0: by time only).",
        ),
    ] = _CHECKPOINT_ROWS,
    prune_s: Annotated[
        float,
        typer.Option(
            "--prune-s", min=1, help="--history: seconds between `prune --keep-days 0` in the soak."
        ),
    ] = 60.0,
    sample_s: Annotated[
        float,
        typer.Option("--sample-s", min=1, help="--history: seconds between the soak's samples."),
    ] = 60.0,
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

    --history measures what history costs instead (simtools/bench/history.py): on a private
    cluster with the server's settings, autovacuum on and, where the server has less, a
    primary's sizing (shared_buffers a quarter of the RAM up to 8 GB, max_wal_size 16 GB;
    --pg-set overrides either), one scheduler and two workers run
    --users users back to back until --runs runs are written, stopping at --mid-runs on the
    way; at 0, the middle point and N it reports the engine alone's runs/s over a --measure-s
    window (a fresh scheduler with no checkpoints of its own; with its WAL, CPU per run on
    each side and the server's checkpoints in it), after a fill the fill's window
    with the scheduler's checkpoints, the scheduler's claim ms and its own checkpoints
    (SIM_CHECKPOINT_INTERVAL_S = --checkpoint-s, SIM_CHECKPOINT_ROWS = --checkpoint-rows),
    and with the engine stopped
    `simctl reconcile` as the engine left it, a `simctl checkpoint`, reconcile right after it,
    `reconcile --full` (each with the longest transaction it held), `simctl status` above
    process start, the full sim_pnl sum and each engine-written table's size; every ratio of
    N against 0 and against the middle point, and the engine alone's runs/s against an empty
    database of the same users measured right beside N (history, empty, history, empty,
    history for --beside 2, each empty database a fresh one whose users hold the history's
    wallets: a run's trades follow its wallet, and fresh users, who hold USD alone, make
    fewer), with the spread of one window over the empty one next to it; every engine window
    with its trades per run. Then a soak
    of --soak-min minutes on a fresh database, the users on slots at --soak-rate runs/s, with
    checkpoints and `simctl prune --keep-days 0` on a cadence, and how late runs started while a prune ran and while none
    did (skipped, saying so, where this checkout has no prune). With --pinned, all of it in
    the deployment's shape: the cluster's postmaster (and every backend) on the first core,
    the bench, the engine, redis and the commands on the others.
    Exit 1 if a ledger or the history does not check out.

    Examples (the last three: where a run's CPU goes; what history costs):

    \b
      simctl bench --quick --json bench.json
      simctl bench --pinned --docs
      simctl bench --steps 50000
      simctl bench --history --runs 1M --soak-min 10 --json hist.json
      simctl bench --history --runs 10M --mid-runs 1M --json hist.json
      simctl bench --history --pinned --runs 10M --soak-min 0 --beside 3
    """
    s = settings()
    from simtools.bench.pinned import refusal
    from simtools.bench.plan import CEILING_ENV, ceiling_file
    from simtools.bench.procs import BenchError

    bench_docs = Path("docs/benchmarks.md")  # the checkout's, from its root (scripts/bench)

    def say(message: str) -> None:
        err.print(f"bench: {message}", markup=False)

    history_options = {
        "--runs": runs != "10M",
        "--mid-runs": mid_runs is not None,
        "--users": users != 100_000,
        "--measure-s": measure_s != 30.0,
        "--beside": beside != 2,
        "--soak-min": soak_min != 30.0,
        "--soak-rate": soak_rate != 278.0,
        "--pg-set": bool(pg_set),
        "--checkpoint-s": checkpoint_s != 60.0,
        "--checkpoint-rows": checkpoint_rows != _CHECKPOINT_ROWS,
        "--prune-s": prune_s != 60.0,
        "--sample-s": sample_s != 60.0,
    }
    if history:
        if quick or steps is not None:
            raise Exit(
                2,
                "bench: --history runs on a private cluster of its own; it takes no --quick or --steps",
            )
        if pinned and (reason := refusal()) is not None:
            raise Exit(2, f"bench: {reason}")
        if docs and not bench_docs.is_file():
            raise Exit(
                2,
                "bench: no docs/benchmarks.md here to append to (run from the checkout's root, or leave out --docs)",
            )
        from simtools.bench.history import HistoryPlan, mid_runs_for, run_history
        from simtools.bench.history_results import markdown as history_markdown

        total = _count(runs)
        mid = mid_runs_for(
            total,
            None
            if mid_runs is None
            else 0
            if mid_runs.strip() == "0"
            else _count(mid_runs, "--mid-runs"),
        )
        if mid is not None and mid >= total:
            raise Exit(2, f"bench: --mid-runs ({mid:,}) must be below --runs ({total:,})")
        pairs = []
        for item in pg_set or []:
            name, eq, value = item.partition("=")
            if (
                not eq
                or not re.fullmatch(r"[a-z_][a-z0-9_.]*", name.strip())
                or not value.strip()
                or any(ord(c) < 32 or ord(c) == 127 for c in value)  # a line of its own in the conf
            ):
                raise Exit(2, f"bench: --pg-set takes NAME=VALUE (a server setting), not {item!r}")
            pairs.append((name.strip(), value.strip()))
        plan = HistoryPlan(
            pg_set=tuple(pairs),
            runs=total,
            mid_runs=mid,
            checkpoint_rows=checkpoint_rows,
            users=users,
            measure_s=measure_s,
            beside=beside,
            soak_min=soak_min,
            soak_rate=soak_rate,
            checkpoint_s=checkpoint_s,
            prune_s=prune_s,
            sample_s=sample_s,
            pinned=pinned,
        )
        command = (
            "simctl bench --history"
            + (" --pinned" if pinned else "")
            + "".join(
                f" {name} {value}"
                for name, value in (
                    ("--runs", runs),
                    ("--mid-runs", mid_runs),
                    ("--users", users),
                    ("--measure-s", f"{measure_s:g}"),
                    ("--beside", beside),
                    ("--soak-min", f"{soak_min:g}"),
                    ("--soak-rate", f"{soak_rate:g}"),
                    ("--pg-set", " --pg-set ".join(pg_set or [])),
                    ("--checkpoint-s", f"{checkpoint_s:g}"),
                    ("--checkpoint-rows", checkpoint_rows),
                    ("--prune-s", f"{prune_s:g}"),
                    ("--sample-s", f"{sample_s:g}"),
                )
                if history_options[name]
            )
        )
        try:
            hist = run_async(lambda: run_history(s, plan, command, say))
        except BenchError as exc:
            raise Exit(2, f"bench: {exc}") from None
        table = history_markdown(hist)
        out.print(table, markup=False)
        if json_out is not None:
            json_out.write_text(json.dumps(hist.as_json(), indent=2, default=str), encoding="utf-8")
        if docs:
            with bench_docs.open("a", encoding="utf-8") as fh:
                fh.write(table)
        if not hist.clean:
            raise Exit(1, "bench: the ledger or the history does not check out (see the table)")
        return
    if any(history_options.values()):
        named = ", ".join(n for n, given in history_options.items() if given)
        raise Exit(2, f"bench: {named} go with --history only")

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
    from simtools.bench.markdown import markdown
    from simtools.bench.procs import pgbench_binary
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


def _count(text: str, option: str = "--runs") -> int:
    """A run count: digits, optionally with k (thousands) or M (millions): 10M, 500k, 200000."""
    raw = text.strip()
    scale = {"k": 1_000, "K": 1_000, "m": 1_000_000, "M": 1_000_000}.get(raw[-1:], 1)
    digits = raw[:-1] if scale != 1 else raw
    if not digits.isascii() or not digits.isdigit() or int(digits) * scale <= 0:
        raise Exit(
            2, f"bench: {option} takes a positive count such as 10M, 500k or 200000, not {text!r}"
        )
    return int(digits) * scale
