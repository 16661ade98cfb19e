"""Prometheus metrics and the /metrics, /healthz and /readyz endpoints of each process.

Each process serves its own registry on SIM_METRICS_PORT (0 = off). Several processes on one
host each need their own port (the Procfile gives each worker `SIM_METRICS_PORT=...`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from workers.logs import get_logger

log = get_logger("simengine.metrics")

RUNS = Counter("simengine_runs", "Slots handled by workers, by outcome.", ["outcome"])
TRADES = Counter("simengine_trades", "Simulated trades written.", ["asset", "side"])
FEES_USD = Counter("simengine_fees_usd", "Trading fees charged (USD, for monitoring only).")
BATCH_SIZE = Histogram(
    "simengine_batch_size", "Slots per batch job.", buckets=(1, 5, 10, 25, 50, 100, 200, 400, 1000)
)
BATCH_SECONDS = Histogram(
    "simengine_batch_seconds",
    "Wall time to apply one batch.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LAG_SECONDS = Histogram(
    "simengine_schedule_lag_seconds",
    "Batch start minus the slot it runs.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)
CLAIMED = Counter("simengine_claimed", "Slots leased by the scheduler.")
CLAIM_SECONDS = Histogram(
    "simengine_claim_seconds",
    "Time of one claim statement.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
LEASES_RECOVERED = Counter(
    "simengine_lease_expiries", "Slots claimed again after an earlier lease ran out (lost jobs)."
)
RETRIES = Counter(
    "simengine_retries", "Transactions retried (serialization, deadlock, connection)."
)
AUTO_PAUSES = Counter("simengine_auto_pauses", "Users paused after repeated failures.")
QUEUE_DEPTH = Gauge("simengine_queue_depth", "Jobs waiting in the arq queue (scheduler's view).")
TICK_AGE = Gauge("simengine_last_tick_age_seconds", "Seconds since the latest model tick written.")
LOOP_ALIVE = Gauge(
    "simengine_loop_heartbeat_timestamp", "Last time the event loop ticked (Unix s)."
)


class HealthServer:
    """A tiny asyncio HTTP server: /metrics, /healthz (Postgres, Redis and this loop), /readyz."""

    def __init__(self, host: str, port: int, check: Callable[[], Awaitable[None]]) -> None:
        self.host, self.port, self.check = host, port, check
        self.ready = False
        self._server: asyncio.Server | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.last_beat = time.monotonic()

    async def _beat(self) -> None:
        while True:
            self.last_beat = time.monotonic()
            LOOP_ALIVE.set(time.time())
            await asyncio.sleep(1)

    async def start(self) -> None:
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.port = sock[1]
        log.info("metrics.listening", host=self.host, port=self.port)

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            status, ctype, body = await self._route(path)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _route(self, path: str) -> tuple[str, str, bytes]:
        if path.startswith("/metrics"):
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest()
        if path.startswith("/readyz"):
            return ("200 OK" if self.ready else "503 Service Unavailable"), "text/plain", b"ready\n"
        if path.startswith("/healthz"):
            try:
                if time.monotonic() - self.last_beat > 5:
                    raise RuntimeError("the event loop heartbeat is stale")
                await asyncio.wait_for(self.check(), 3)
            except Exception as exc:  # any failure of a dependency is "unhealthy", said in the body
                return "503 Service Unavailable", "text/plain", f"unhealthy: {exc!r}\n".encode()
            return "200 OK", "text/plain", b"ok\n"
        return "404 Not Found", "text/plain", b"not found\n"
