"""Retry only what is retryable: never a constraint violation."""

from __future__ import annotations

import asyncpg
import pytest

from store.db import is_retryable, retrying


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (asyncpg.SerializationError("40001"), True),
        (asyncpg.DeadlockDetectedError("40P01"), True),
        (asyncpg.AdminShutdownError("57P01"), True),
        (asyncpg.CannotConnectNowError("57P03"), True),
        (asyncpg.ConnectionDoesNotExistError("gone"), True),
        (ConnectionResetError("reset"), True),
        (asyncpg.UniqueViolationError("23505"), False),
        (asyncpg.CheckViolationError("23514"), False),
        (asyncpg.ForeignKeyViolationError("23503"), False),
        (asyncpg.QueryCanceledError("57014"), False),
        (ValueError("bug"), False),
    ],
)
def test_retry_policy(exc: BaseException, retry: bool) -> None:
    assert is_retryable(exc) is retry


async def test_retrying_retries_a_deadlock_and_never_a_violation() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise asyncpg.DeadlockDetectedError("40P01")
        return "done"

    retried: list[BaseException] = []
    assert await retrying(flaky, on_retry=retried.append) == "done"
    assert len(calls) == 3 and len(retried) == 2

    async def violates() -> None:
        calls.append(1)
        raise asyncpg.UniqueViolationError("23505")

    calls.clear()
    with pytest.raises(asyncpg.UniqueViolationError):
        await retrying(violates)
    assert len(calls) == 1
