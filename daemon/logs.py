"""structlog setup: JSON lines in production (stderr not a terminal), console in a terminal.

The invocation line is written for every request, so its cost matters: inside the daemon's
event loop, lines are gathered for at most 5 ms and written together (a write() per line was a
fifth of the front-end's CPU under load), and the timestamp reuses the formatted second.
Pending lines are also flushed at exit, so a clean stop loses none.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

_FLUSH_WINDOW = 0.005  # seconds a log line may wait for others to share its write()


class _BatchedSink:
    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending: list[str] = []
        self._scheduled = False

    def write(self, line: str) -> None:
        self._pending.append(line)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # no event loop (start-up, CLI): write at once
            return
        self._scheduled = True
        # A short window lets a busy loop gather many lines into one write().
        loop.call_later(_FLUSH_WINDOW, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = ("\n".join(self._pending) + "\n").encode("utf-8", "replace")
        self._pending.clear()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view):]
            except InterruptedError:
                continue
            except OSError:
                return  # stderr is gone: nothing better to do with a log line


class _BatchedLogger:
    """The structlog 'logger': every level goes to the shared sink."""

    def __init__(self, sink: _BatchedSink) -> None:
        self._sink = sink

    def msg(self, message: str) -> None:
        self._sink.write(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _Timestamp:
    """ISO-8601 UTC with milliseconds; the formatted second is reused within that second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1000):03d}Z"
        event["level"] = method
        return event


_sink = _BatchedSink(2)
atexit.register(_sink.flush)


def configure_logging(log_format: str | None = None, level: int = logging.INFO) -> None:
    """Configure structlog once per process; `log_format` None picks by terminal."""
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    logger = _BatchedLogger(_sink)
    structlog.configure(
        processors=[_Timestamp(), structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *args: logger,
        cache_logger_on_first_use=True,
    )
    # aiohttp and asyncio report through stdlib logging; route their warnings to stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")


def get_logger(name: str = "fnd") -> Any:
    return structlog.get_logger(name)
