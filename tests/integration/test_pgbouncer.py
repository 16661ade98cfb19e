"""Behind PgBouncer: a real pgbouncer in transaction pooling mode (Debian's 1.18: no
prepared-statement support) in front of the test database; the scheduler and a worker run a round
through it with SIM_PG_STATEMENT_CACHE_SIZE=0, each slot exactly once, the ledger clean."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from store.ledger import reconcile
from tests.support.procs import no_partial_runs, run_counts, seed_due, simctl
from tests.support.services import free_port, server_url

pytestmark = pytest.mark.timeout(180)


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )


class PgBouncer:
    """A private pgbouncer on loopback, pool_mode = transaction, any database -> our server."""

    def __init__(self, binary: str) -> None:
        pg = urlsplit(server_url())
        self.user, self.password = pg.username or "postgres", pg.password or ""
        self.port = free_port()
        # pgbouncer refuses to run as root: as root it drops to `nobody`, which must read the
        # config and write its log, so the files live in a fresh directory of nobody's.
        self.dir = Path(tempfile.mkdtemp(prefix="simengine-pgbouncer-"))
        (self.dir / "userlist.txt").write_text(f'"{self.user}" "{self.password}"\n')
        self.log = self.dir / "pgbouncer.log"
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={pg.hostname or '127.0.0.1'} port={pg.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            # Fewer server connections than client ones: clients really share them.
            "default_pool_size = 2\nmax_client_conn = 50\n"
            f"logfile = {self.log}\npidfile = {self.dir / 'pgbouncer.pid'}\n"
        )
        args = [binary, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            shutil.chown(self.dir, "nobody")
            for f in self.dir.iterdir():
                shutil.chown(f, "nobody")
            args[1:1] = ["-u", "nobody"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not start: {self.stderr()}") from None
                time.sleep(0.02)

    def stderr(self) -> str:
        """The tail of pgbouncer's log (it logs to its logfile)."""
        text = self.log.read_text() if self.log.exists() else ""
        return text[-2000:]

    def url_for(self, db_url: str) -> str:
        parts = urlsplit(db_url)
        netloc = f"{self.user}{':' + self.password if self.password else ''}@127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pgbouncer() -> Iterator[PgBouncer]:
    binary = pgbouncer_binary()
    if binary is None:  # scripts/test installs it; only a bare pytest elsewhere can lack it
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; scripts/test does)")
    bouncer = PgBouncer(binary)
    yield bouncer
    bouncer.stop()


async def test_a_round_through_pgbouncer_in_transaction_mode_runs_each_slot_once(
    pg: asyncpg.Connection, env: dict[str, str], db_url: str, pgbouncer: PgBouncer
) -> None:
    users = 40
    await seed_due(pg, users)
    env = {
        **env,
        "DATABASE_URL": pgbouncer.url_for(db_url),
        "SIM_PG_STATEMENT_CACHE_SIZE": "0",
        "SIM_BATCH_SIZE": "5",
        "SIM_WORKER_CONCURRENCY": "3",
    }
    scheduler = simctl(["scheduler", "--once"], env)
    assert scheduler.returncode == 0, scheduler.stderr[-2000:]
    worker = simctl(["worker", "--burst"], env)
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert "error" not in worker.stderr.lower(), worker.stderr[-2000:]
    assert await run_counts(pg) == (users, users)  # every slot once, none twice
    await no_partial_runs(pg)
    assert await reconcile(pg) == []
    # The round went through the bouncer, and its clients really shared server connections.
    log = pgbouncer.log.read_text()
    db = urlsplit(db_url).path.lstrip("/")
    clients = log.count(f"login attempt: db={db} ")
    servers = log.count("new connection to server")  # this private bouncer serves only this db
    assert clients >= 4 and 1 <= servers <= 2, log[-2000:]
