"""Where a run's phases execute. The shared shape is the server at DATABASE_URL and REDIS_URL
with every process on every core; the pinned shape (bench/pinned.py) is a private cluster on one
core and everything else on the others. Phases take a Shape and never ask which one it is."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from redis.asyncio import Redis

from simconfig import Settings
from simtools.bench import queries as sql
from simtools.bench.procs import command_name, parent, tree_cpu_s
from simtools.bench.results import Cluster
from store.db import connect

_LOOPBACK = {"", "localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class Shape:
    name: str
    admin_url: str  # the server's admin database; scratch databases are made next to it
    redis_url: str
    server_version: str
    # None: no binding (every core). Otherwise pgbench, scheduler, workers and Redis run here.
    client_cpus: frozenset[int] | None
    postmaster: int | None  # the server's postmaster when it runs on this machine
    redis_pid: int | None  # redis-server's pid when it runs on this machine
    cluster: Cluster | None = None

    def postgres_cpu_s(self) -> float | None:
        """CPU the whole cluster has used so far (every backend, the checkpointer, autovacuum
        and the backends already gone), or None when the server is not on this machine."""
        return None if self.postmaster is None else tree_cpu_s(self.postmaster)


def _local(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in _LOOPBACK or host.startswith("/")


def local_postmaster(url: str, backend_pid: int) -> int | None:
    """The postmaster of the server at `url` if it runs here: the parent of our backend."""
    if not _local(url) or command_name(backend_pid) != "postgres":
        return None
    postmaster = parent(backend_pid)
    if postmaster is None or command_name(postmaster) != "postgres":
        return None
    return postmaster


async def local_redis_pid(url: str) -> int | None:
    """redis-server's pid from INFO, if it runs here."""
    if not _local(url):
        return None
    client = Redis.from_url(url, socket_timeout=5)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    pid = int(info.get("process_id", 0))
    return pid if (command_name(pid) or "").startswith("redis-server") else None


async def shared_shape(settings: Settings) -> Shape:
    """DATABASE_URL's server and REDIS_URL, every process free to use every core."""
    conn = await connect(settings.database_url)
    try:
        server = await sql.server(conn)
        # While the backend lives: its parent is the postmaster.
        postmaster = local_postmaster(settings.database_url, server.backend_pid)
    finally:
        await conn.close()
    return Shape(
        name="shared",
        admin_url=settings.database_url,
        redis_url=settings.redis_url,
        server_version=server.version,
        client_cpus=None,
        postmaster=postmaster,
        redis_pid=await local_redis_pid(settings.redis_url),
    )
