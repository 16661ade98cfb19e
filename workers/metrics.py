"""Prometheus metrics and the /metrics, /livez and /readyz endpoints of each process.

Each process serves its own registry on SIM_METRICS_PORT (0 = off). Several processes on one
host each need their own port (the Procfile gives each worker `SIM_METRICS_PORT=...`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from engine.errors import SimError
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
RUNS_REFUSED = Counter(
    "simengine_runs_refused",
    "Slots a worker refused because they had not come (later than Postgres's now()): a forged "
    "or replayed job, or a clock that jumped.",
)
FOREIGN_JOBS = Counter(
    "simengine_foreign_jobs",
    "Jobs of another database (or of none) met on this worker's queue; not run, put back.",
)
CLAIM_AGE = Gauge(
    "simengine_claim_age_seconds",
    "Seconds since this scheduler's last claim attempt that got the claim lock (scheduler only).",
)
CLAIMED = Counter("simengine_claimed", "Slots leased by the scheduler.")
CHECKPOINTS = Counter(
    "simengine_checkpoints", "Checkpoints taken by this scheduler, by state.", ["state"]
)
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
    """A tiny asyncio HTTP server: /metrics, /livez (this loop is alive), /readyz (Postgres and
    Redis answer). It lives as long as the process: it answers 503 with the reason while a
    dependency is away, never a refused connection. /healthz answers as /livez does, for probes
    set up with that name."""

    def __init__(self, host: str, port: int, check: Callable[[], Awaitable[str | None]]) -> None:
        self.host, self.port, self.check = host, port, check
        self._server: asyncio.Server | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.last_beat = time.monotonic()

    async def _beat(self) -> None:
        while True:
            self.last_beat = time.monotonic()
            LOOP_ALIVE.set(time.time())
            await asyncio.sleep(1)

    async def start(self) -> None:
        """Bind and serve; MetricsPortError (configuration) if the address cannot be bound."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            raise MetricsPortError(
                f"SIM_METRICS_PORT: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
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
        if path.startswith(("/livez", "/healthz")):
            stale_s = time.monotonic() - self.last_beat
            if stale_s > _STALE_BEAT_S:
                return _unavailable(f"not alive: the event loop heartbeat is {stale_s:.0f} s old")
            return "200 OK", "text/plain", b"alive\n"
        if path.startswith("/readyz"):
            try:
                reason = await asyncio.wait_for(self.check(), _CHECK_TIMEOUT_S)
            except TimeoutError:
                reason = f"the dependency check took over {_CHECK_TIMEOUT_S} s"
            except Exception as exc:  # a failing check is "not ready", said in the body
                reason = f"{type(exc).__name__}: {exc}"
            if reason is not None:
                return _unavailable(f"not ready: {reason}")
            return "200 OK", "text/plain", b"ready\n"
        return "404 Not Found", "text/plain", b"not found\n"


class MetricsPortError(SimError):
    """SIM_METRICS_PORT cannot be bound (in use, not allowed): a configuration error."""


_STALE_BEAT_S = 5.0
_CHECK_TIMEOUT_S = 3.0


def _unavailable(reason: str) -> tuple[str, str, bytes]:
    return "503 Service Unavailable", "text/plain", (reason + "\n").encode()
