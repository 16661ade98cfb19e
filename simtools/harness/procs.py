"""Processes the tools start: the `simctl` command line, a spawned process with its stderr in
a file, stopping a group of them, and a supervisor that keeps schedulers and workers running
(as systemd or Kubernetes would) and counts the ones that exit by themselves."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simtools.harness.services import pinned


def module_argv(module: str, *args: str) -> list[str]:
    """`python -m module args` with this interpreter (a venv's or a wheel's, as it runs)."""
    return [sys.executable, "-m", module, *args]


def simctl_argv(*args: str) -> list[str]:
    """The simctl command line with this interpreter: every tool and test starts simctl so."""
    return module_argv("simctl", *args)


def run_simctl(
    args: Sequence[str], env: dict[str, str], timeout: float = 120, *, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one simctl command to completion, its output captured as text."""
    return subprocess.run(
        simctl_argv(*args),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Proc:
    """A long-running child process. stdout is discarded; stderr goes to `log` (a file: a pipe
    could fill and block it) or is discarded. `cpus` runs it under taskset (which execs it: the
    pid is the process's own); `new_session` keeps a terminal's signals away from it."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        *,
        cpus: Iterable[int] | None = None,
        cwd: Path | None = None,
        log: Path | None = None,
        new_session: bool = False,
    ) -> None:
        self.log = log
        command = pinned(cpus, list(argv))
        if log is None:
            self.popen = subprocess.Popen(
                command,
                env=env,
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=new_session,
            )
        else:
            with log.open("wb") as fh:
                self.popen = subprocess.Popen(
                    command,
                    env=env,
                    cwd=cwd,
                    stdout=subprocess.DEVNULL,
                    stderr=fh,
                    start_new_session=new_session,
                )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Send `sig` if it still runs."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)

    def output(self) -> str:
        """What it wrote to stderr so far ("" without a log)."""
        if self.log is None:
            return ""
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


def stop(procs: Iterable[Proc], sig: int = signal.SIGTERM, grace_s: float = 60) -> list[int]:
    """Signal every process (SIGTERM: a graceful stop), wait up to `grace_s` for each, SIGKILL
    what is still there; their exit codes."""
    group = list(procs)
    for p in group:
        p.signal(sig)
    for p in group:
        try:
            p.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            p.signal(signal.SIGKILL)
            p.popen.wait()
    return [p.popen.returncode for p in group]


def last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def with_app_name(url: str, name: str) -> str:
    """`url` whose connections carry application_name `name` (asyncpg passes unknown DSN
    parameters to the server as settings)."""
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


@dataclass
class Child:
    """One supervised simctl process: its role ("worker" or "scheduler"), its slot's index and
    generation (how many times the slot was started)."""

    role: str
    index: int
    gen: int
    proc: Proc
    app: str  # the application_name its Postgres backends carry
    killed: bool = False  # by the supervisor's owner: its exit is expected

    @property
    def log_path(self) -> Path:
        assert self.proc.log is not None
        return self.proc.log

    def alive(self) -> bool:
        return self.proc.alive()


@dataclass
class Supervisor:
    """Keeps simctl processes running in slots (role, index): a process gone is started again
    after restart_delay_s, and one that exited by itself (not killed through kill()) is
    recorded in `exits`. Each process's DATABASE_URL names it (`app_prefix`-w0-1 for worker 0's
    first generation), so its backends can be found in pg_stat_activity; stderr goes to
    logdir/<role><index>-<gen>.log."""

    env: dict[str, str]
    db_url: str
    logdir: Path
    cwd: Path
    restart_delay_s: float
    app_prefix: str
    slots: dict[tuple[str, int], Child] = field(default_factory=dict)
    gens: Counter[tuple[str, int]] = field(default_factory=Counter)
    exits: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0
    extra_pids: set[int] = field(default_factory=set)  # other processes to kill at the end
    stopping: bool = False
    _pending: set[tuple[str, int]] = field(default_factory=set)

    def app_name(self, role: str, index: int, gen: int) -> str:
        return f"{self.app_prefix}-{role[0]}{index}-{gen}"

    def start(self, role: str, index: int) -> Child:
        key = (role, index)
        self.gens[key] += 1
        gen = self.gens[key]
        app = self.app_name(role, index, gen)
        proc = Proc(
            simctl_argv(role),
            {**self.env, "DATABASE_URL": with_app_name(self.db_url, app)},
            cwd=self.cwd,
            log=self.logdir / f"{role}{index}-{gen}.log",
            new_session=True,
        )
        child = Child(role, index, gen, proc, app)
        self.slots[key] = child
        return child

    def alive(self, role: str) -> list[Child]:
        return [c for (r, _), c in sorted(self.slots.items()) if r == role and c.alive()]

    def by_app(self, name: str) -> Child | None:
        for child in self.slots.values():
            if child.app == name and child.alive():
                return child
        return None

    def kill(self, child: Child) -> None:
        """SIGKILL a supervised process on purpose (it is started again, not counted)."""
        child.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.proc.pid, signal.SIGKILL)

    async def watch(self) -> None:
        """Restart any process that is gone (after restart_delay_s); record unexpected exits."""
        while not self.stopping:
            for key, child in list(self.slots.items()):
                if key in self._pending or child.alive():
                    continue
                if not child.killed:
                    self.exits.append(
                        {
                            "role": child.role,
                            "index": child.index,
                            "exit_code": child.proc.popen.returncode,
                            "at": datetime.now(UTC).isoformat(),
                            "last_line": last_line(child.log_path),
                        }
                    )
                self._pending.add(key)
                asyncio.get_running_loop().call_later(self.restart_delay_s, self._restart, key)
            await asyncio.sleep(0.1)

    def _restart(self, key: tuple[str, int]) -> None:
        self._pending.discard(key)
        if not self.stopping:
            self.start(*key)
            self.restarts += 1

    async def stop_all(self, grace_s: float = 30) -> None:
        """SIGTERM every process (their graceful stop), SIGKILL what is still there after grace_s."""
        self.stopping = True
        children = [c for c in self.slots.values() if c.alive()]
        for child in children:
            child.killed = True
            child.proc.signal(signal.SIGTERM)

        async def exited(child: Child) -> None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(child.proc.popen.wait, grace_s)

        await asyncio.gather(*(exited(c) for c in children))
        self.kill_all()

    def kill_all(self) -> None:
        """SIGKILL every process still running (the last resort of any exit path)."""
        self.stopping = True
        for child in self.slots.values():
            if child.alive():
                child.proc.signal(signal.SIGKILL)
                child.proc.popen.wait()
        for pid in list(self.extra_pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
