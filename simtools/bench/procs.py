"""What a bench run measures its processes by: pgbench, and what /proc says about the CPU and
memory of the schedulers, workers, redis-server and Postgres (the harness starts them)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from simtools.harness.errors import ToolError
from simtools.harness.services import pinned


class BenchError(ToolError):
    """The bench cannot run here (a missing tool, a phase that could not be set up): exit 2."""


_CLOCK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (which may hold spaces), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_s(pids: Iterable[int]) -> float:
    """utime + stime of live processes, in seconds (a process gone since counts nothing)."""
    ticks = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _CLOCK_TCK


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[1] == str(pid):
                out.append(int(entry.name))
    return out


def tree_cpu_s(postmaster: int) -> float:
    """CPU of a Postgres cluster so far, in seconds: the postmaster's own, that of the children
    it has reaped (cutime + cstime: backends that exited count whole) and that of its live
    children (backends, checkpointer, walwriter, autovacuum; an exited one not yet reaped still
    shows its times). Backends do not fork, so that is every process of the cluster.

    A backend reaped between reading the postmaster and reading the children would count in
    neither (measured: a quarter of the ceiling's CPU lost when read as pgbench's backends
    exit), so the postmaster is read before and after the children, until no reap came between.
    """

    def reaped() -> tuple[int, int]:
        fields = _stat(postmaster)
        if fields is None:
            raise BenchError(f"the postmaster (pid {postmaster}) is gone")
        return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])

    for _ in range(100):
        before = reaped()
        live = cpu_s(children(postmaster))
        if reaped()[1] == before[1]:
            return sum(before) / _CLOCK_TCK + live
    raise BenchError(f"the cluster of postmaster {postmaster} never held still to be measured")


def command_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def parent(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pgbench_binary() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    raise BenchError("pgbench is missing; install it (apt-get install postgresql-client) and rerun")


def pgbench_init(scale: int, url: str, cpus: Iterable[int] | None) -> None:
    done = subprocess.run(
        pinned(cpus, [pgbench_binary(), "-i", "-q", "-s", str(scale), url]),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"pgbench -i failed: {_last(done.stderr)}")


def pgbench(clients: int, args: list[str], url: str, cpus: Iterable[int] | None) -> float:
    """tps of one pgbench run with prepared statements and up to two threads."""
    common = ["-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2))]
    done = subprocess.run(
        pinned(cpus, [pgbench_binary(), *common, *args, url]),
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    match = re.search(r"tps = ([0-9.]+)", done.stdout)
    if done.returncode != 0 or match is None:
        raise BenchError(f"pgbench failed: {_last(done.stderr)}")
    return float(match.group(1))


def _last(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(no output)"
