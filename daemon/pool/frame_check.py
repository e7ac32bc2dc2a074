"""Check every frame a worker sends before the daemon acts on it.

A worker runs user code, and that code can write frames of its own (docs/security.md): a
frame is a claim, not a fact. Each check here mirrors what the worker itself enforces
(protocol/http_rules.py and the configured limits), so an honest worker never trips one; a
frame that does is refused whole, and the worker that sent it is killed by the caller.
A frame that passes is returned as its type of fnd.protocol.messages (the same dict, its
optional fields filled in and long texts cut), so the caller reads typed fields only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

from fnd.protocol import messages as m
from fnd.protocol.http_rules import (
    BAD_VALUE_CHARS,
    HEADER_NAME,
    STATUS_MAX,
    STATUS_MIN,
    header_bytes,
)

_MAX_REASON = 4096  # a reason is one line for the log, not a channel for bulk data


class FrameError(Exception):
    """The frame breaks the protocol; the message says how, in one line."""


@dataclass(frozen=True)
class Limits:
    """What a response may carry (the same limits the worker applies to a function)."""

    max_body: int
    max_header_count: int
    max_header_bytes: int


def check_id(message: m.Message, expected: str | None) -> None:
    if expected is None or message.get("id") != expected:
        raise FrameError(f"{message.get('t')} for an invocation the worker does not hold")


def result(message: m.Message, limits: Limits) -> m.Result:
    status = message.get("status")
    if type(status) is not int or not STATUS_MIN <= status <= STATUS_MAX:
        raise FrameError(f"status {_show(status)} is not an integer in "
                         f"{STATUS_MIN}-{STATUS_MAX}")
    body = message.get("body")
    if type(body) is not bytes:
        raise FrameError(f"body is a {type(body).__name__}, not bytes")
    if len(body) > limits.max_body:
        raise FrameError(f"body of {len(body)} bytes is over the {limits.max_body} byte limit")
    message["headers"] = _headers(message.get("headers"), limits)
    message["error"] = _optional_text(message, "error")
    # Anything but true means something the invocation started may still run.
    message["clean"] = message.get("clean", True) is True
    return cast(m.Result, message)


def _headers(raw: Any, limits: Limits) -> list[tuple[str, str]]:
    if type(raw) is not list:
        raise FrameError("headers are not a list")
    if len(raw) > limits.max_header_count:
        raise FrameError(f"{len(raw)} headers, over the limit of {limits.max_header_count}")
    headers: list[tuple[str, str]] = []
    size = 0
    for pair in raw:
        if type(pair) is not list or len(pair) != 2:
            raise FrameError("a header is not a [name, value] pair")
        name, value = pair
        if type(name) is not str or not HEADER_NAME.fullmatch(name):
            raise FrameError(f"header name {_show(name)} is not an HTTP token")
        if type(value) is not str or BAD_VALUE_CHARS.search(value):
            raise FrameError(f"header {name!r} has a value that is not text without "
                             "control characters")
        size += header_bytes(name, value)
        if size > limits.max_header_bytes:
            raise FrameError(f"headers over the {limits.max_header_bytes} byte limit")
        headers.append((name, value))
    return headers


def done(message: m.Message) -> m.Done:
    clean = message.get("clean", True)
    if type(clean) is not bool:
        raise FrameError("clean is not a boolean")
    cpu = message.get("cpu", 0.0)
    if type(cpu) not in (int, float) or not math.isfinite(cpu) or cpu < 0:
        raise FrameError(f"cpu {_show(cpu)} is not a finite, non-negative number")
    rss = message.get("rss", 0)
    if type(rss) is not int or rss < 0:
        raise FrameError(f"rss {_show(rss)} is not a non-negative integer")
    message["clean"], message["cpu"], message["rss"] = clean, float(cpu), rss
    message["reason"] = _optional_text(message, "reason")
    return cast(m.Done, message)


def log(message: m.Message) -> tuple[str, str, str | None]:
    """(line, stream, level) of a LOG frame."""
    line, stream, level = message.get("line", ""), message.get("stream", "stdout"), \
        message.get("level")
    if type(line) is not str:
        raise FrameError("log line is not text")
    if stream not in m.LOG_STREAMS:
        raise FrameError(f"log stream {_show(stream)} is unknown")
    if level is not None and type(level) is not str:
        raise FrameError("log level is not text")
    return line, stream, level


def ready(message: m.Message) -> tuple[int, dict[str, str]]:
    pid, layers = message.get("pid"), message.get("layers", {})
    if type(pid) is not int or pid <= 0:
        raise FrameError("ready without a valid pid")
    if type(layers) is not dict or not all(
        type(k) is str and type(v) is str for k, v in layers.items()
    ):
        raise FrameError("ready with layers that are not a map of text")
    return pid, layers


def preflight(message: m.Message) -> list[tuple[str, str]]:
    """The problems a PREFLIGHT_RESULT reports: (route, reason) pairs."""
    problems = message.get("problems")
    if type(problems) is not list:
        raise FrameError("preflight problems are not a list")
    found: list[tuple[str, str]] = []
    for pair in problems:
        if type(pair) is not list or len(pair) != 2 or not all(type(x) is str for x in pair):
            raise FrameError("a preflight problem is not a [route, reason] pair")
        found.append((pair[0], pair[1][:_MAX_REASON]))
    return found


def failed(message: m.Message) -> str:
    return _optional_text(message, "reason") or "no reason given"


def _optional_text(message: m.Message, key: str) -> str | None:
    value = message.get(key)
    if value is None:
        return None
    if type(value) is not str:
        raise FrameError(f"{key} is not text")
    return value[:_MAX_REASON]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
