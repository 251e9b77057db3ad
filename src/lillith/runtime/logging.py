"""structlog set-up: one call at the edge, JSON or console rendering.

Events are snake_case facts with key-values (``log.info("checkpoint_written",
step=1200, bytes=...)``), never f-strings; numerical kernels never log.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["console", "json"]


def configure_logging(level: str = "info", fmt: LogFormat = "console") -> None:
    """Configure structlog and the stdlib root logger once, at start-up.

    Parameters
    ----------
    level : str
        Minimum level name (``debug``, ``info``, ``warning``, ``error``).
    fmt : {"console", "json"}
        Human-readable lines for a terminal or one JSON object per line.
    """
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        raise ValueError(f"unknown log level {level!r}")
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A bound structlog logger (``component=name`` when a name is given)."""
    log: structlog.stdlib.BoundLogger = structlog.get_logger()
    return log.bind(component=name) if name else log
