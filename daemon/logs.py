"""structlog setup: JSON lines in production (stderr not a terminal), console in a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure_logging(log_format: str | None = None, level: int = logging.INFO) -> None:
    """Configure structlog once per process; `log_format` None picks by terminal."""
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiohttp and asyncio report through stdlib logging; route their warnings to stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")


def get_logger(name: str = "fnd") -> Any:
    return structlog.get_logger(name)
