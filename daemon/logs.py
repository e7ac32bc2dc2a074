"""structlog setup: JSON lines in production (stderr not a terminal), console in a terminal.

The invocation line is written for every request, so its cost matters: inside the daemon's
event loop, lines are gathered for at most 5 ms and written together (a write() per line was a
fifth of the front-end's CPU under load), and the timestamp reuses the formatted second.
Pending lines are also flushed at exit, so a clean stop loses none.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, cast

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog.processors import _json_fallback_handler
from structlog.typing import FilteringBoundLogger

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


class JsonLine:
    """structlog's JSONRenderer, the same output, with its encoder made once: ``json.dumps``
    with ``default=`` builds a JSONEncoder and a C encoder for every line. Without the
    encoder's cycle check (no state shared between threads); a line that holds a cycle
    fails with RecursionError instead of ValueError."""

    def __init__(self) -> None:
        self._encode = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
            None, _json_fallback_handler, json.encoder.encode_basestring_ascii,
            None, ": ", ", ", False, False, True)

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
        return "".join(self._encode(event, 0))


class MultilineConsole:
    """The console renderer, with multi-line values (tracebacks, problem lists) printed as
    the lines they are, indented under the line, instead of one repr with escaped newlines;
    a ``problems`` list prints one problem a line."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        problems = event.get("problems")
        if isinstance(problems, list) and problems:
            event["problems"] = "\n".join(f"- {problem}" for problem in problems) + "\n"
        blocks = [(key, value) for key, value in event.items()
                  if key != "event" and isinstance(value, str) and "\n" in value]
        for key, _ in blocks:
            del event[key]
        line = str(self._inner(logger, method, event))
        for key, value in blocks:
            text = "\n".join("    " + part for part in value.rstrip("\n").split("\n"))
            line += f"\n  {key}:\n{text}"
        return line


_sink = _BatchedSink(2)
atexit.register(_sink.flush)


class _Direct:
    """What configure_logging set up, for ``line_writer``: the level and two processors."""

    def __init__(self, level: int, processors: list[Any]) -> None:
        self.level = level
        self.processors = processors  # what structlog runs, while this is its configuration
        self.timestamp, _, self.renderer = processors


_direct: _Direct | None = None
_LEVEL_NUMBERS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "error": logging.ERROR, "critical": logging.CRITICAL}


def line_writer(log: Any, method: str, event: str,
                context: Mapping[str, Any]) -> Callable[[dict[str, Any]], None]:
    """``write(fields)``: the line ``log.bind(**context).<method>(event, **fields)`` writes,
    for a line written on every request (the invocation line).

    Once configure_logging has run, the line skips structlog's per-call wrapper (a copy of
    the fields, two keyword-argument passes, format_exc_info: a third of the line's cost)
    and goes through the same timestamp, renderer and sink, so it reads the same. Any other
    ``log`` (a test's), or a structlog configured otherwise since, gets the plain call.
    ``fields`` must not hold ``exc_info``; the writer may change it.
    """
    plain = getattr(log.bind(**context), method)
    if not type(log).__module__.startswith("structlog."):  # a test's stand-in
        return lambda fields: plain(event, **fields)
    number = _LEVEL_NUMBERS[method]
    prefix = dict(context)

    def write(fields: dict[str, Any]) -> None:
        direct = _direct
        if direct is None or structlog.get_config()["processors"] is not direct.processors:
            plain(event, **fields)
            return
        if number < direct.level:
            return
        line = {**prefix, **fields, "event": event}
        _sink.write(direct.renderer(None, method, direct.timestamp(None, method, line)))

    return write


def configure_logging(log_format: str | None = None, level: int = logging.INFO) -> None:
    """Configure structlog once per process; `log_format` None picks by terminal."""
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if log_format == "console":
        # Colours only for a terminal: escape codes in a redirected file or a pipe are noise.
        renderer = MultilineConsole(structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty() and "NO_COLOR" not in os.environ))
    else:
        renderer = JsonLine()
    global _direct
    logger = _BatchedLogger(_sink)
    processors = [_Timestamp(), structlog.processors.format_exc_info, renderer]
    _direct = _Direct(level, processors)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *args: logger,
        cache_logger_on_first_use=True,
    )
    # aiohttp and asyncio report through stdlib logging: their records become lines of the
    # same format, so a JSON log stays one JSON object per line (tracebacks included).
    root = logging.getLogger()
    root.handlers[:] = [_StdlibHandler()]
    root.setLevel(logging.WARNING)


class _StdlibHandler(logging.Handler):
    """A stdlib log record as one structlog line; a traceback goes in one field."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit(record)
        except Exception:  # noqa: BLE001 - logging must never raise into its caller
            self.handleError(record)

    @staticmethod
    def _emit(record: logging.LogRecord) -> None:
        log = structlog.get_logger(record.name)
        message = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and record.name == "aiohttp.server":
            # A request aiohttp could not parse (no Host, a control character, garbage):
            # the client's mistake, answered 400 by aiohttp. One line, no traceback.
            _, found, client = message.rpartition(" from ")
            log.warning("bad request", outcome="bad_request", status=exc.code,
                        reason=" ".join(str(exc.message).split())[:300],
                        client=client if found else None)
            return
        fields: dict[str, Any] = {"logger": record.name}
        if exc is not None:
            fields["exception"] = "".join(traceback.format_exception(exc)).rstrip()
        method = _LEVELS.get(record.levelno, "error")
        getattr(log, method)(message, **fields)


_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
           logging.ERROR: "error", logging.CRITICAL: "critical"}


def get_logger(name: str = "fnd") -> FilteringBoundLogger:
    """The named logger; typed as what configure_logging makes, so mypy checks each call."""
    return cast(FilteringBoundLogger, structlog.get_logger(name))
