"""structlog set-up: JSON when not on a terminal, key=value on one. Events have stable names."""

from __future__ import annotations

import logging
import sys

import structlog

from simconfig import Settings


def configure_logging(settings: Settings) -> None:
    """Configure structlog and the stdlib root logger (arq logs through it) once per process."""
    level = getattr(logging, settings.sim_log_level.upper())
    as_json = (
        settings.sim_log_json if settings.sim_log_json is not None else not sys.stderr.isatty()
    )
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=max(level, logging.WARNING), stream=sys.stderr, format="%(name)s %(message)s"
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
