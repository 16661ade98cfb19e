"""Connections and the translation of driver errors into the project's own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from store.errors import Misconfigured, Refused, StoreError, Unavailable, first_line

T = TypeVar("T")

# A plain connection or one borrowed from a pool: every store function takes either.
Conn = asyncpg.Connection | PoolConnectionProxy
Pool = asyncpg.Pool
Record = asyncpg.Record
# Every id of a bigint column: the upper end of an id range that leaves nothing out.
ALL_IDS = 2**63 - 1
# The table a statement reads does not exist (SQLSTATE 42P01): a database never migrated.
UndefinedTable = asyncpg.UndefinedTableError

_CONNECTION_LOST = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    ConnectionError,
    OSError,
)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


async def _init(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=_dumps, decoder=json.loads, schema="pg_catalog")


# What connecting can raise: the server away or refusing, a bad DSN, a refusal by the server.
_CONNECT_ERRORS = (TimeoutError, OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection, or Unavailable naming the (redacted) DSN."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=10)
    except _CONNECT_ERRORS as exc:
        raise connect_error(dsn, exc) from None
    await _init(conn)
    return conn


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    statement_cache_size: int = 100,
    read_only: bool = False,
    jit: bool = True,
) -> asyncpg.Pool:
    """A pool whose connections decode json/jsonb; Unavailable if Postgres does not answer.
    statement_cache_size=0 (SIM_PG_STATEMENT_CACHE_SIZE) works behind PgBouncer in transaction
    mode: no named prepared statement outlives its transaction. read_only: every transaction
    of its connections is read-only (default_transaction_read_only), so a write fails in
    Postgres whatever the code above asked for (the console without actions). jit=False: no
    JIT compilation on its connections (the console's: its reads are index probes whose plans
    cost enough to cross jit_above_cost, and compiling took 0.8 s per overview)."""
    server_settings = {"default_transaction_read_only": "on"} if read_only else {}
    if not jit:
        server_settings["jit"] = "off"
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init,
            timeout=10,
            statement_cache_size=statement_cache_size,
            server_settings=server_settings or None,
        )
    except _CONNECT_ERRORS as exc:
        raise connect_error(dsn, exc) from None
    assert pool is not None
    return pool


# SQLSTATE classes and codes that no amount of waiting fixes: invalid authorization (28), unknown
# database (3D), a role without CONNECT (42501).
_CONFIG_SQLSTATES = ("28", "3D", "42501")


def connect_error(dsn: str, exc: BaseException) -> StoreError:
    """Misconfigured for a refusal that waiting cannot fix, Unavailable for one it can (refused
    or reset connections, timeouts, "the database system is starting up", too many clients)."""
    from simconfig import redact_url  # here: importing settings costs short commands ~0.1 s CPU

    message = f"cannot connect to {redact_url(dsn)}: {first_line(exc)}"
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    if sqlstate.startswith(_CONFIG_SQLSTATES) or isinstance(exc, ValueError):
        return Misconfigured(message)
    return Unavailable(message)


@asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection closed on exit, whatever happens."""
    conn = await connect(dsn)
    try:
        yield conn
    finally:
        await asyncio.shield(conn.close())


def is_retryable(exc: BaseException) -> bool:
    """Serialization failures, deadlocks and lost connections; never a constraint violation."""
    if isinstance(exc, asyncpg.TransactionRollbackError):
        return True
    # Class 08 (connection exception) and 57 (operator intervention: admin shutdown, crash
    # shutdown, cannot connect now): the server went away, the work itself was fine.
    if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.OperatorInterventionError):
        return not isinstance(exc, asyncpg.QueryCanceledError)
    return isinstance(exc, _CONNECTION_LOST) and not isinstance(exc, asyncpg.PostgresError)


def translate(exc: BaseException) -> StoreError:
    """The project's error for a driver error (the caller raises it `from` the original)."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError):
        detail = getattr(exc, "constraint_name", None) or first_line(exc)
        return Refused(f"refused by the database: {detail}")
    if isinstance(exc, _CONNECTION_LOST):
        return Unavailable(f"database connection lost: {first_line(exc)}")
    return StoreError(f"database error: {first_line(exc)}")


# SQLSTATEs of a database without the schema a statement reads: undefined table, column,
# function; invalid schema name.
_NO_SCHEMA = ("42P01", "42703", "42883", "3F000")


def driver_error(exc: BaseException) -> StoreError | None:
    """The project's error for a driver error that reached a command unhandled, None for one
    that is a bug: no schema or a missing privilege (Misconfigured), a value the database
    refuses (Refused), a lost connection (Unavailable)."""
    if not type(exc).__module__.startswith("asyncpg"):
        return None
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in _NO_SCHEMA:
        return Misconfigured(
            f"the database DATABASE_URL names has no simengine schema or an older one "
            f"({first_line(exc)}): check DATABASE_URL, or run `simctl migrate` on it"
        )
    if sqlstate == "42501":
        return Misconfigured(
            f"{first_line(exc)}: the role in DATABASE_URL lacks a privilege this command needs"
        )
    if (isinstance(sqlstate, str) and sqlstate.startswith("22")) or isinstance(exc, ValueError):
        return Refused(f"refused by the database: {first_line(exc)}")
    if is_retryable(exc):
        return Unavailable(f"database connection lost: {first_line(exc)}")
    return None


def is_outage(exc: BaseException) -> bool:
    """Whether waiting for the server may fix `exc`: Unavailable, a retryable error, or asyncpg's
    InternalClientError ("cannot switch to state ..."), which a connection cut while asyncpg
    starts an operation on it raises: the server went away, the work was fine."""
    return isinstance(exc, Unavailable | asyncpg.InternalClientError) or is_retryable(exc)


@contextmanager
def refused_on(violation: Literal["unique", "check"], message: str) -> Iterator[None]:
    """Refused(message) for the named constraint violation raised inside the block."""
    kind = asyncpg.UniqueViolationError if violation == "unique" else asyncpg.CheckViolationError
    try:
        yield
    except kind:
        raise Refused(message) from None


async def retrying(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int = 4,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run `fn` again on retryable errors only (bounded, jittered backoff)."""

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(exc)

    async for attempt in AsyncRetrying(
        retry=retry_if_exception(is_retryable),
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=0.05, max=2),
        reraise=True,
        before_sleep=before_sleep,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # pragma: no cover


async def pooled(
    pool: Pool,
    fn: Callable[[Conn], Awaitable[T]],
    *,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """`fn` on a pooled connection, retried on a fresh connection each attempt (a retry on the
    connection that just broke would fail the same way). Unavailable once the retries give up
    on a lost server; the project's error for anything else the driver raises."""

    async def attempt() -> T:
        async with pool.acquire() as conn:
            return await fn(conn)

    try:
        return await retrying(attempt, on_retry=on_retry)
    except StoreError:
        raise
    except asyncpg.InternalClientError as exc:
        # A connection cut in the middle of a statement can leave asyncpg's protocol in a
        # state it reports this way; the pool replaces the connection on the next acquire.
        raise Unavailable(f"postgres: {first_line(exc)}") from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        if is_retryable(exc) or isinstance(exc, TimeoutError):
            raise Unavailable(f"postgres: {first_line(exc)}") from exc
        raise translate(exc) from exc


# -- schema changes: the driver's errors by what they mean, and the retry on lock timeouts -------
def is_lock_timeout(exc: BaseException) -> bool:
    """A statement gave up waiting for a lock (lock_timeout): nothing of it was applied."""
    return isinstance(exc, asyncpg.LockNotAvailableError)


def is_check_violation(exc: BaseException) -> bool:
    """A row breaks a CHECK constraint (for instance one being validated)."""
    return isinstance(exc, asyncpg.CheckViolationError)


def is_database_error(exc: BaseException) -> bool:
    """An error the server reported for a statement (not a lost connection)."""
    return isinstance(exc, asyncpg.PostgresError)


async def retrying_lock_timeouts(fn: Callable[[], Awaitable[T]], *, attempts: int) -> T:
    """Run `fn` again when it gave up waiting for a lock, and on nothing else: a schema change
    under `lock_timeout` waits a little, jittered, so the platform's writes are not queued behind
    it. The last lock timeout is raised when the attempts are spent."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(is_lock_timeout),
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=0.2, max=5),
        reraise=True,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # pragma: no cover
