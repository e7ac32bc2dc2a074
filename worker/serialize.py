"""Turn what a function hands back into ``(status, headers, body)``.

The rules: docs/handlers.md#what-a-value-becomes and docs/handlers.md#twilioresponse.

Serialisation happens in the worker, where the objects live; the daemon receives bytes and
header pairs that are already valid, so nothing a function returns can break HTTP framing.
Decisions where the spec is silent: header values may be str, int or float; Content-Length
and Transfer-Encoding set by a function are dropped (the daemon frames the body); a status
must be 200-599; cookie rules apply to every Set-Cookie header, however it was set.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from twilio.twiml import TwiML

from fnd.protocol.http_rules import (
    BAD_VALUE_CHARS,
    HEADER_NAME,
    STATUS_MAX,
    STATUS_MIN,
    header_bytes,
)
from fnd.worker.received_config import ReceivedConfig
from fnd.worker.response import SET_COOKIE, Response, cookie_name

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
JSON = "application/json"
BINARY = "application/octet-stream"
XML = "text/xml; charset=utf-8"

ONE_DAY = 86400
_EXPIRES_SLACK = 60  # "Expires = now + 1 day" computed a moment ago is still one day
_FRAMING = {"content-length", "transfer-encoding"}
_NO_BODY = {204, 304}

Headers = list[tuple[str, str]]
_WORKER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Headers
    body: bytes
    reason: str | None = None  # one line: why fnd produced this status itself


class ResponseError(Exception):
    """The function's response cannot be sent; ``status`` is what the client gets."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


def reply_for(response: Any, settings: ReceivedConfig) -> Reply:
    """The reply for ``callback(None, response)`` or a return-style handler's value."""
    try:
        if isinstance(response, Response):
            status, headers, body = _from_response(response, settings)
        else:
            status, headers, body = 200, [], b""
            if response is not None:
                content_type, body = _encode(response, TEXT)
                headers = [("Content-Type", content_type)]
        _check_limits(headers, body, settings)
    except ResponseError as exc:
        return text_reply(exc.status, str(exc), reason=str(exc))
    except Exception as exc:  # e.g. a TwiML object whose str() raises: still one clean 500
        text = f"response could not be serialised: {describe(exc)}"
        return text_reply(500, text, reason=one_line(text))
    return Reply(status, headers, body)


def error_reply(
    text: str, error: object, settings: ReceivedConfig, reason: str, public: str | None = None
) -> Reply:
    """A 500 for a failed invocation. ``reason`` is the one-line cause the daemon
    logs, e.g. "handler raised ValueError: boom".

    The body is ``public`` in production when fnd wrote the message (a raised exception: a
    short line without paths or the exception's message, which may hold secrets); with
    ``--dev`` it is ``text`` followed by the traceback of ``error``. ``public=None`` means the
    function chose what to say (``callback("card declined")``, ``callback(exc)``): that text
    is the body in both modes (with the traceback in dev mode, if it has one). A dict or list
    error is sent as its JSON (``application/json``), as Twilio does, so a client can parse
    ``callback({"errorMessage": ...})``; one JSON cannot encode falls back to text.
    """
    if isinstance(error, dict | list):
        encoded = _json_text(error)
        if encoded is not None:
            return Reply(500, [("Content-Type", JSON)], encoded.encode("utf-8"), one_line(reason))
    if public is not None and not settings.dev:
        return text_reply(500, public, reason=one_line(reason))
    body = text
    if settings.dev and isinstance(error, BaseException) and error.__traceback__ is not None:
        body = f"{text}\n\n{format_traceback(error)}"
    return text_reply(500, body, reason=one_line(reason))


def format_traceback(error: BaseException) -> str:
    """The traceback as Python prints it, without the worker's own frames on top."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_WORKER_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb or error.__traceback__))


def text_reply(status: int, text: str, reason: str | None = None) -> Reply:
    return Reply(status, [("Content-Type", TEXT)], text.encode("utf-8", "replace"), reason)


def describe(error: object) -> str:
    """``str(error)``; an exception as ``TypeName: message`` (or ``TypeName``); a dict or
    list as its JSON when it has one (the body the client gets, not a Python repr)."""
    if isinstance(error, BaseException):
        message = str(error)
        return f"{type(error).__name__}: {message}" if message else type(error).__name__
    if isinstance(error, dict | list):
        encoded = _json_text(error)
        if encoded is not None:
            return encoded
    return str(error)


def _json_text(value: dict[Any, Any] | list[Any]) -> str | None:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _encode(value: Any, text_type: str) -> tuple[str, bytes]:
    """Content type and bytes for a body value (docs/handlers.md#what-a-value-becomes)."""
    if isinstance(value, str):
        return text_type, value.encode("utf-8")
    if isinstance(value, bytes | bytearray):
        return BINARY, bytes(value)
    if isinstance(value, TwiML):
        return XML, str(value).encode("utf-8")
    if isinstance(value, dict | list | bool | int | float):
        try:
            encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ResponseError(f"response is not JSON serialisable: {exc}") from None
        return JSON, encoded.encode("utf-8")
    raise ResponseError(
        f"response of type {_type_name(value)} is not serialisable; send str, bytes, "
        "dict, list, a number, TwiML or Twilio.Response"
    )


def _type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _from_response(response: Response, settings: ReceivedConfig) -> tuple[int, Headers, bytes]:
    status = response.status_code
    if type(status) is not int or not STATUS_MIN <= status <= STATUS_MAX:
        raise ResponseError(f"invalid response status code {status!r}; expected 200-599")
    headers = _header_lines(response.headers, settings)
    body = b""
    if response.body is not None and status not in _NO_BODY:
        content_type, body = _encode(response.body, HTML)
        if not any(name.lower() == "content-type" for name, _ in headers):
            headers.append(("Content-Type", content_type))
    return status, headers, body


def _header_lines(headers: dict[str, Any], settings: ReceivedConfig) -> Headers:
    lines: Headers = []
    for name, value in headers.items():
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            raise ResponseError(f"invalid response header name {name!r}" + _crlf_note(name))
        if isinstance(value, dict):
            raise ResponseError(
                f"response header {name!r} has a dict value; use a str or a list of str"
            )
        lowered = name.lower()
        if lowered in _FRAMING:
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            text = _header_value(name, item)
            if lowered == SET_COOKIE:
                text = _cookie(text, settings)
            lines.append((name, text))
    return lines


def _crlf_note(name: object) -> str:
    return " (contains CR or LF)" if isinstance(name, str) and BAD_VALUE_CHARS.search(name) else ""


def _header_value(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ResponseError(
            f"response header {name!r} has a {type(value).__name__} value; use a str"
        )
    text = str(value)
    if BAD_VALUE_CHARS.search(text):
        raise ResponseError(f"response header {name!r} value contains a control character")
    return text


def _cookie(cookie: str, settings: ReceivedConfig) -> str:
    """One Set-Cookie value made safe: no Domain, at most a day, HttpOnly; Secure."""
    first, *rest = cookie.split(";")
    attributes = [part.strip() for part in rest if part.strip()]
    keys = set()
    kept = [first.strip()]
    for attribute in attributes:
        key, _, value = attribute.partition("=")
        key = key.strip().lower()
        if key == "domain":
            continue
        if key in ("max-age", "expires") and _over_one_day(key, value.strip()):
            raise ResponseError(
                f"cookie {cookie_name(cookie)!r}: {attribute} is over one day, "
                "the longest lifetime allowed",
                status=400,
            )
        keys.add(key)
        kept.append(attribute)
    if settings.cookie_secure:
        kept += [flag for flag in ("HttpOnly", "Secure") if flag.lower() not in keys]
    return "; ".join(kept)


def _over_one_day(key: str, value: str) -> bool:
    if key == "max-age":
        try:
            return int(value) > ONE_DAY
        except ValueError:
            return False  # clients ignore a malformed Max-Age
    try:
        expires = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return False
    return expires > time.time() + ONE_DAY + _EXPIRES_SLACK


def _check_limits(headers: Headers, body: bytes, settings: ReceivedConfig) -> None:
    if len(body) > settings.max_response_body:
        raise ResponseError(
            f"response body of {len(body)} bytes exceeds the "
            f"{settings.max_response_body} byte limit"
        )
    size = sum(header_bytes(name, value) for name, value in headers)
    if len(headers) > settings.max_header_count or size > settings.max_header_bytes:
        raise ResponseError(
            f"response headers too large: {len(headers)} fields, {size} bytes "
            f"(limit {settings.max_header_count} fields, {settings.max_header_bytes} bytes)"
        )
