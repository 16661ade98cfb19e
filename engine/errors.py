"""The project's exceptions: one base class for everything simengine raises on purpose."""


class SimError(Exception):
    """Base of every error simengine raises deliberately."""


class InvariantViolation(SimError):
    """A run would break a money rule (negative balance, selling reserved crypto, ...)."""


class InvalidUserState(SimError):
    """A user's stored state cannot be simulated (e.g. reserved crypto exceeds the holding)."""


class UnknownStrategy(SimError):
    """A strategy name or its parameters are not recognised."""


class Rejected(SimError):
    """A request or a value breaks a rule (a bad amount, an illegal state change): the caller's
    to fix, never a bug."""
