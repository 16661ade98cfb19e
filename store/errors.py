"""Errors of the data-access layer, translated from the driver's."""

from engine.errors import SimError


class StoreError(SimError):
    """A database operation failed."""


class Unavailable(StoreError):
    """The database cannot be reached."""


class MigrationError(StoreError):
    """A migration is missing, changed after it was applied, or failed."""


class NotFound(StoreError):
    """The row asked for does not exist."""


class Refused(StoreError):
    """The request breaks a rule (a constraint, an illegal state change, a bad value)."""
