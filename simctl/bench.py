"""simctl bench: the end-to-end benchmark (the bench package, imported when it runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from simctl.common import Exit, err, out, run_async, settings


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
