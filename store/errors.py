"""Errors of the data-access layer, translated from the driver's."""

from collections.abc import Iterator
from contextlib import contextmanager

from engine.errors import Rejected, SimError


def first_line(exc: BaseException) -> str:
    """An exception as one line for logs and refusals: its message's first line, or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class StoreError(SimError):
    """A database operation failed."""


class Unavailable(StoreError):
    """The database cannot be reached."""


class Misconfigured(StoreError):
    """The database refuses us for good: wrong password or user, unknown database, a bad DSN,
    a missing schema or privilege. Waiting will not help; the configuration must change."""


class MigrationError(StoreError):
    """A migration is missing, changed after it was applied, or failed."""


class NotFound(StoreError):
    """The row asked for does not exist."""


class Refused(StoreError, Rejected):
    """The request breaks a rule (a constraint, an illegal state change, a bad value)."""


@contextmanager
def refusing() -> Iterator[None]:
    """Refused for a rule the core rejects inside the block: a store caller sees one refusal."""
    try:
        yield
    except Rejected as exc:
        if isinstance(exc, Refused):
            raise
        raise Refused(str(exc)) from None
