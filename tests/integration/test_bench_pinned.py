"""The pinned shape, set up by the bench's own code: a private cluster with the server's settings
whose every process is bound to the first core, and Postgres CPU read so that backends already
gone still count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from simconfig import Settings
from simtools.bench import queries as sql
from simtools.bench.pinned import copied, pinned_shape
from simtools.bench.procs import children, tree_cpu_s
from store.db import connect
from tests.support.services import server_url

pytestmark = pytest.mark.timeout(120)

# The list: each must be copied whatever its source on the server.
REQUIRED = {
    "shared_buffers", "work_mem", "max_wal_size", "synchronous_commit", "fsync", "wal_level",
    "wal_buffers", "checkpoint_timeout", "checkpoint_completion_target", "max_connections",
}  # fmt: skip


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the pinned shape needs 2 cores")
async def test_the_private_cluster_runs_on_its_own_core_with_the_servers_settings() -> None:
    cores = sorted(os.sched_getaffinity(0))
    settings = Settings(_env_file=None, database_url=server_url())
    messages: list[str] = []
    async with pinned_shape(settings, messages.append) as shape:
        assert shape.postmaster is not None and shape.cluster is not None
        folder = Path(f"/proc/{shape.postmaster}/cwd").resolve()
        conn = await connect(shape.admin_url)
        try:
            backend = (await sql.server(conn)).backend_pid
            # The postmaster, this backend and every other process of the cluster: core 0 only.
            cluster = [shape.postmaster, *children(shape.postmaster)]
            assert backend in cluster and len(cluster) >= 4  # checkpointer, writers, ...
            assert {pid: os.sched_getaffinity(pid) for pid in cluster} == {
                pid: {cores[0]} for pid in cluster
            }
            private = await sql.settings_of(conn, list(shape.cluster.settings))
        finally:
            await conn.close()
        # The clients' side (Redis, and this harness meanwhile) on the other cores.
        assert shape.redis_pid is not None
        assert os.sched_getaffinity(shape.redis_pid) == set(cores[1:])
        assert os.sched_getaffinity(0) == set(cores[1:])
    assert os.sched_getaffinity(0) == set(cores)  # restored
    assert not folder.exists()  # stopped and removed

    server = await connect(server_url())
    try:
        names = list(shape.cluster.settings)
        theirs = await sql.settings_of(server, names)
    finally:
        await server.close()
    assert set(names) >= REQUIRED
    assert private == theirs == shape.cluster.settings
    assert shape.cluster.settings_differing == {}
    assert not {"port", "data_directory", "listen_addresses", "unix_socket_directories"} & set(
        names
    )


def test_settings_that_name_a_place_are_never_copied() -> None:
    server = [
        ("shared_buffers", "16384", "integer"),
        ("data_directory", "/var/lib/postgresql/15/main", "string"),
        ("ssl_cert_file", "server.crt", "string"),
        ("archive_command", "cp %p /archive/%f", "string"),
        ("stats_somewhere", "/srv/stats", "string"),  # a path under another name
        ("log_line_prefix", "%m [%p] ", "string"),
        ("port", "5432", "integer"),
    ]
    assert copied(server) == {"shared_buffers": "16384", "log_line_prefix": "%m [%p] "}


def test_cluster_cpu_counts_children_already_gone() -> None:
    """A backend that exits mid-phase is reaped by the postmaster: its CPU moves to the
    postmaster's cutime and must still count (here this process plays the postmaster)."""
    me = os.getpid()
    before = tree_cpu_s(me)
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert tree_cpu_s(me) - before >= 0.3
