"""The pinned shape: the deployment's shape on one box. A private Postgres cluster with the
server's settings runs on the first core this process may use (the postmaster is started under
`taskset`, and every backend it forks inherits the core); pgbench, the scheduler, the workers, a
private redis-server and this harness run on the others. So the database has a core of its own,
as it has a machine of its own in a deployment, and each side's CPU per run can be read apart."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from simconfig import Settings
from simtools.bench import queries as sql
from simtools.bench.procs import BenchError
from simtools.bench.results import Cluster
from simtools.bench.shapes import Shape
from simtools.harness.services import PrivateCluster, PrivateRedis, ServiceError, pg_bin
from store.db import connect

# Copied whatever their source on the server: what a run's cost depends on most, and what
# initdb may have guessed differently for the private cluster (every wal_* and checkpoint_*
# setting is copied as well, by the query).
ALWAYS = [
    "shared_buffers", "work_mem", "maintenance_work_mem", "effective_cache_size", "temp_buffers",
    "max_connections", "max_wal_size", "min_wal_size", "synchronous_commit", "fsync",
    "full_page_writes", "commit_delay", "commit_siblings", "autovacuum", "huge_pages", "jit",
    "random_page_cost", "effective_io_concurrency", "bgwriter_delay", "bgwriter_lru_maxpages",
    "max_worker_processes", "max_parallel_workers", "max_parallel_workers_per_gather",
    "default_statistics_target", "TimeZone",
]  # fmt: skip
# Never copied: where the server lives and talks (paths, port, addresses, sockets, files,
# certificates), and what would reach outside the private cluster (archiving and replication
# commands point at the server's storage and peers).
_NEVER = {
    "port", "listen_addresses", "data_directory", "config_file", "hba_file", "ident_file",
    "external_pid_file", "unix_socket_directories", "unix_socket_group", "unix_socket_permissions",
    "cluster_name", "log_directory", "log_filename", "archive_mode", "archive_library",
    "primary_slot_name", "dynamic_library_path", "krb_server_keyfile", "ssl", "bonjour_name",
}  # fmt: skip
_NEVER_SUFFIXES = ("_file", "_directory", "_directories", "_command", "_conninfo", "_path")


def copied(settings: list[tuple[str, str, str]]) -> dict[str, str]:
    """The settings a private cluster takes from the server: none that names a path, a port, an
    address, a socket, a file or an outside command."""
    out = {}
    for name, value, vartype in settings:
        if name in _NEVER or name.startswith("ssl") or name.endswith(_NEVER_SUFFIXES):
            continue
        if vartype == "string" and value.startswith("/"):
            continue  # a path under another name
        out[name] = value
    return out


def cores() -> list[int]:
    """The cores this process may use (its affinity, which `taskset` narrows), in order."""
    return sorted(os.sched_getaffinity(0))


def refusal() -> str | None:
    """Why the pinned shape cannot run here (too few cores, a missing tool), or None: asked
    before a run starts, not after its shared half."""
    have = cores()
    if len(have) < 2:
        return (
            f"--pinned needs at least 2 cores (Postgres on one, everything else on the others); "
            f"this process may use {len(have)}"
        )
    for tool, package in (("taskset", "util-linux"), ("redis-server", "redis-server")):
        if shutil.which(tool) is None:
            return f"--pinned needs {tool} (apt-get install {package})"
    try:
        pg_bin("initdb")
        pg_bin("pg_ctl")
    except ServiceError as exc:
        return f"--pinned needs the Postgres server binaries: {exc}"
    return None


@asynccontextmanager
async def pinned_shape(
    settings: Settings, say: Callable[[str], None], *, pin_self: bool = True
) -> AsyncIterator[Shape]:
    """Start the private cluster (the server's settings, the postmaster on the first core) and a
    private redis-server (on the others), move this harness to the others too, and yield the
    shape; on exit everything is stopped, removed and this process's cores restored."""
    reason = refusal()
    if reason is not None:
        raise BenchError(reason)
    allowed = cores()
    pg_cpus, client_cpus = frozenset(allowed[:1]), frozenset(allowed[1:])
    conn = await connect(settings.database_url)
    try:
        server = await sql.server(conn)
        conf = copied(await sql.server_settings(conn, ALWAYS))
        segment_mb = await sql.wal_segment_mb(conn)
    finally:
        await conn.close()
    say(
        f"pinned: initdb a private cluster with the server's {len(conf)} settings; Postgres on "
        f"core {sorted(pg_cpus)}, everything else on {sorted(client_cpus)}"
    )
    cluster = PrivateCluster(conf, major=server.version_num // 10000, wal_segment_mb=segment_mb)
    try:
        await asyncio.to_thread(cluster.init)
    except ServiceError as exc:
        raise BenchError(f"pinned: {exc}") from None
    redis: PrivateRedis | None = None
    before = os.sched_getaffinity(0)
    try:
        try:
            await asyncio.to_thread(cluster.start, pg_cpus)
            redis = PrivateRedis(cpus=client_cpus)
            await asyncio.to_thread(redis.start)
        except ServiceError as exc:
            raise BenchError(f"pinned: {exc}") from None
        postmaster = cluster.postmaster_pid()
        if os.sched_getaffinity(postmaster) != pg_cpus:
            raise BenchError(f"pinned: the postmaster is not bound to core {sorted(pg_cpus)}")
        private = await connect(cluster.url())
        try:
            version = (await sql.server(private)).version
            got = await sql.settings_of(private, list(conf))
        finally:
            await private.close()
        differing = {
            name: f"{value} / {got.get(name)}"
            for name, value in conf.items()
            if got.get(name) != value
        }
        if differing:
            say(f"pinned: settings that did not take: {differing}")
        if pin_self:
            os.sched_setaffinity(0, client_cpus)
        yield Shape(
            name="pinned",
            admin_url=cluster.url(),
            redis_url=redis.url,
            server_version=version,
            client_cpus=client_cpus,
            postmaster=postmaster,
            redis_pid=redis.pid,
            cluster=Cluster(
                postgres_cpus=sorted(pg_cpus),
                client_cpus=sorted(client_cpus),
                server_version=version,
                settings=conf,
                settings_differing=differing,
            ),
        )
    finally:
        os.sched_setaffinity(0, before)
        if redis is not None:
            redis.close()
        await asyncio.to_thread(cluster.close)
