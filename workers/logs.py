"""structlog set-up: JSON when not on a terminal, key=value on one. Events have stable names.

Everything a process writes goes through one renderer: our structlog events and the stdlib
records of arq, asyncio and the drivers (structlog's ProcessorFormatter on the root handler), so
a JSON log stays JSON line by line. Exceptions keep their traceback (structured in JSON).
"""

from __future__ import annotations

import logging
import sys

import structlog

from engine.text import printable
from simconfig import Settings

# Libraries whose own INFO lines are per-job chatter on the hot path (arq logs every job).
_QUIET_BELOW_WARNING = ("arq", "asyncio")


def configure_logging(settings: Settings) -> None:
    """Configure structlog and the stdlib root logger (arq, asyncio) once per process."""
    level = getattr(logging, settings.sim_log_level.upper())
    as_json = (
        settings.sim_log_json if settings.sim_log_json is not None else not sys.stderr.isatty()
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    shared.append(escape_controls)
    renderer: structlog.types.Processor
    if as_json:
        # A traceback as a list of frames: one JSON line. Without the frames' local variables:
        # they hold the settings (an admin key, a DSN's password) and rows of users.
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_BELOW_WARNING:
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else logging.WARNING)


def escape_controls(
    _logger: object, _method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """Each text value with its control characters escaped (`printable`): a user's name or an
    error's message in a log line cannot move the cursor of whoever tails the log, nor start a
    line of its own. Tracebacks keep their lines."""
    for key, value in event.items():
        if isinstance(value, str) and key not in _MULTILINE:
            event[key] = printable(value)
    return event


_MULTILINE = frozenset({"exception", "stack"})


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
