"""The floors a run must meet (the engine against baselines measured on the same machine, so
that a slower server moves both), judged on its result, and the markdown table it prints (and
appends to docs/benchmarks.md with --docs): both shapes side by side, then each floor."""

from __future__ import annotations

import json
from collections.abc import Callable

from simtools.bench.results import BenchResult, Floor, ShapeResult


def _at_least(x: float | None, target: float) -> bool | None:
    return None if x is None else x >= target


def _at_most(x: float | None, target: float) -> bool | None:
    return None if x is None else x <= target


def _pinned_floors(p: ShapeResult | None) -> list[Floor]:
    if p is None:
        missing = "not measured (run with --pinned)"
        return [
            Floor("pinned", "end-to-end vs ceiling", "≥ 0.9", None, missing, None),
            Floor("pinned", "Postgres CPU per run vs the ceiling's", "≤ 1.05", None, missing, None),
            Floor(
                "pinned",
                "Python CPU per run vs the ceiling's Postgres CPU per run",
                "≤ 0.8",
                None,
                missing,
                None,
            ),
        ]
    e, c, cpu = p.engine, p.ceiling, p.cpu
    by = e.cpu_us_per_run
    return [
        Floor(
            "pinned",
            "end-to-end vs ceiling",
            "≥ 0.9",
            p.ratios.engine_vs_ceiling,
            f"{e.runs_per_s} vs {c.best_runs_per_s} user-runs/s",
            _at_least(p.ratios.engine_vs_ceiling, 0.9),
        ),
        Floor(
            "pinned",
            "Postgres CPU per run vs the ceiling's",
            "≤ 1.05",
            cpu.engine_postgres_vs_ceiling,
            f"{cpu.engine_postgres_us_per_run} vs {cpu.ceiling_postgres_us_per_run} µs",
            _at_most(cpu.engine_postgres_vs_ceiling, 1.05),
        ),
        Floor(
            "pinned",
            "Python CPU per run vs the ceiling's Postgres CPU per run",
            "≤ 0.8",
            cpu.python_vs_ceiling_postgres,
            f"{cpu.python_us_per_run} µs (workers {by.get('workers')}, scheduler "
            f"{by.get('scheduler')}, Redis {by.get('redis')}) vs {cpu.ceiling_postgres_us_per_run} µs",
            _at_most(cpu.python_vs_ceiling_postgres, 0.8),
        ),
    ]


def _shared_floors(s: ShapeResult) -> list[Floor]:
    e, r = s.engine, s.ratios
    out = [
        Floor(
            "shared",
            "end-to-end vs ceiling",
            "≥ 0.5",
            r.engine_vs_ceiling,
            f"{e.runs_per_s} vs {s.ceiling.best_runs_per_s} user-runs/s",
            _at_least(r.engine_vs_ceiling, 0.5),
        ),
        Floor(
            "shared",
            "end-to-end vs naive",
            "≥ 5",
            r.engine_vs_naive,
            f"{e.runs_per_s} vs {s.naive.runs_per_s} user-runs/s",
            _at_least(r.engine_vs_naive, 5),
        ),
        Floor(
            "shared",
            "p99 lag at half of peak",
            "≤ 1 s",
            e.sustained.lag_p99_s,
            f"p50 {e.sustained.lag_p50_s} s, max {e.sustained.lag_max_s} s at "
            f"{e.sustained.offered_runs_per_s} runs/s",
            _at_most(e.sustained.lag_p99_s, 1.0),
        ),
    ]
    if s.claim is not None:
        claims = s.claim.ms_per_claim_by_users
        largest = max(claims, key=int)
        out.append(
            Floor(
                "shared",
                f"claim at {int(largest):,} vs 10,000 users",
                "≤ 2",
                r.claim_largest_vs_10k,
                f"{claims[largest]} vs {claims.get('10000')} ms",
                _at_most(r.claim_largest_vs_10k, 2),
            )
        )
    if s.rss is not None:
        out.append(
            Floor(
                "shared",
                f"worker RSS after {s.rss.runs:,} vs 10,000 runs",
                "≤ 1.1",
                s.rss.ratio,
                f"{s.rss.after_all_kb} vs {s.rss.after_10k_kb} kB",
                _at_most(s.rss.ratio, 1.1),
            )
        )
    return out


def _reconcile_floor(s: ShapeResult) -> Floor:
    rec = s.engine.reconcile
    return Floor(
        s.shape,
        "reconcile after the run",
        "clean",
        float(rec.discrepancies),
        "clean" if rec.clean else f"{rec.discrepancies} discrepancies",
        rec.clean,
    )


def floors(result: BenchResult) -> list[Floor]:
    """Every floor, pinned shape first; the pinned ones unmeasured without
    --pinned, the 1M-user ones measured at --quick's sizes (their names say which)."""
    out = _pinned_floors(result.pinned)
    if result.pinned is not None:
        out.append(_reconcile_floor(result.pinned))
    out += _shared_floors(result.shared)
    out.append(_reconcile_floor(result.shared))
    return out


def _v(x: object) -> str:
    """A figure as the table prints it: "—" where it was not measured."""
    return "—" if x is None else str(x)


def _row(label: str, shapes: list[ShapeResult], cell: Callable[[ShapeResult], object]) -> str:
    return f"| {label} | " + " | ".join(_v(cell(s)) for s in shapes) + " |"


def _cpu_pair(s: ShapeResult) -> str:
    c = s.cpu
    if c.ceiling_postgres_us_per_run is None and c.engine_postgres_us_per_run is None:
        return "— (Postgres is not on this machine)"
    return (
        f"{_v(c.ceiling_postgres_us_per_run)} / {_v(c.engine_postgres_us_per_run)} "
        f"({_v(c.engine_postgres_vs_ceiling)}×)"
    )


def _python(s: ShapeResult) -> str:
    c = s.cpu
    if c.python_vs_ceiling_postgres is None:
        return _v(c.python_us_per_run)
    return f"{c.python_us_per_run} ({c.python_vs_ceiling_postgres}× the ceiling's Postgres)"


def _peak(s: ShapeResult) -> str:
    e = s.engine
    return (
        f"{e.runs_per_s} ({e.users} users, {e.workers} workers; best of "
        f"{', '.join(str(p) for p in e.peaks_runs_per_s)})"
    )


def _lag(s: ShapeResult) -> str:
    t = s.engine.sustained
    return f"{_v(t.lag_p50_s)} / {_v(t.lag_p99_s)} / {_v(t.lag_max_s)} at {t.offered_runs_per_s} runs/s"


def _reconciled(s: ShapeResult) -> str:
    rec = s.engine.reconcile
    return "clean" if rec.clean else f"BROKEN: {rec.discrepancies}"


def _verdict(f: Floor) -> str:
    return "not measured" if f.met is None else ("met" if f.met else "**not met**")


def markdown(result: BenchResult) -> str:
    """The run's section of docs/benchmarks.md: both shapes side by side, then the floors."""
    shapes = [result.shared] + ([result.pinned] if result.pinned else [])
    m = result.machine
    lines = [
        f"\n## {result.when} ({'quick' if result.quick else 'full'})\n",
        f"Command: `{result.command}`. Machine: {m['cpus']} CPUs, {m['platform']}, Python "
        f"{m['python']}, PostgreSQL {m['postgres']}. Settings: {json.dumps(result.settings)}.\n",
    ]
    if result.pinned is not None and result.pinned.cluster is not None:
        cl = result.pinned.cluster
        took = len(cl.settings) - len(cl.settings_differing)
        lines.append(
            f"Pinned: a private cluster (PostgreSQL {cl.server_version}) on core "
            f"{cl.postgres_cpus}; pgbench, the scheduler, the workers and a private Redis on "
            f"{cl.client_cpus}; {took} of the server's {len(cl.settings)} settings copied"
            + (
                f" (did not take: {json.dumps(cl.settings_differing)})"
                if cl.settings_differing
                else ""
            )
            + ".\n"
        )
    have_claim = [s for s in shapes if s.claim is not None]
    lines += [
        "| measure | " + " | ".join(s.shape for s in shapes) + " |",
        "|---|" + "---|" * len(shapes),
        _row("ceiling.pgb best user-runs/s", shapes, lambda s: s.ceiling.best_runs_per_s),
        _row("simengine peak user-runs/s", shapes, _peak),
        _row("simengine peak trades/s", shapes, lambda s: s.engine.trades_per_s),
        _row("ratio to ceiling", shapes, lambda s: s.ratios.engine_vs_ceiling),
        _row("pgbench TPC-B best tps", shapes, lambda s: s.tpcb.best_tps),
        _row("ratio to TPC-B", shapes, lambda s: s.ratios.engine_vs_tpcb),
        _row("naive design user-runs/s", shapes, lambda s: s.naive.runs_per_s),
        _row("ratio to naive", shapes, lambda s: s.ratios.engine_vs_naive),
        _row("sustained lag p50 / p99 / max (s)", shapes, _lag),
        _row("Postgres CPU µs per run: ceiling / simengine", shapes, _cpu_pair),
        _row("workers + scheduler + Redis CPU µs per run", shapes, _python),
        _row("CPU µs per run by process", shapes, lambda s: json.dumps(s.engine.cpu_us_per_run)),
    ]
    if have_claim:
        lines += [
            _row(
                "claim ms by users",
                shapes,
                lambda s: json.dumps(s.claim.ms_per_claim_by_users) if s.claim else "—",
            ),
            _row("claim largest / 10k", shapes, lambda s: s.ratios.claim_largest_vs_10k or "—"),
            _row(
                "worker RSS (kB) after 10k / all runs",
                shapes,
                lambda s: (
                    f"{s.rss.after_10k_kb} / {s.rss.after_all_kb} ({s.rss.runs} runs)"
                    if s.rss
                    else "—"
                ),
            ),
        ]
    lines += [
        _row("reconcile after the run", shapes, _reconciled),
        "",
        "| floor | shape | target | measured | |",
        "|---|---|---|---|---|",
    ]
    for f in result.floors:
        measured = "—" if f.measured is None else f"{f.measured} ({f.detail})"
        if f.name == "reconcile after the run":
            measured = f.detail
        lines.append(f"| {f.name} | {f.shape} | {f.target} | {measured} | {_verdict(f)} |")
    return "\n".join(lines) + "\n"
