"""Build a function's ``event`` dict from plain request inputs (docs/handlers.md#event).

Kept free of aiohttp objects so it can be tested without a server; it runs on every request,
so the common case (GET, no query, a handful of headers) does almost no work.

Decisions beyond docs/handlers.md#event:

- Content types are matched on the media type only, case-insensitively (parameters such as
  ``charset`` are ignored). JSON is ``application/json`` or any ``+json`` suffix type
  (``application/vnd.api+json``); forms are ``application/x-www-form-urlencoded``. Everything
  else, ``multipart/form-data`` included, is "another content type": body ignored.
- Form bodies are always UTF-8, whatever ``charset`` says. Invalid UTF-8 (raw or
  percent-encoded) is decoded leniently, each bad sequence becoming U+FFFD, exactly as the
  query string is (Twilio decodes both leniently). JSON bodies may be UTF-8/16/32 (RFC 8259
  detection, as ``json``); invalid UTF-8 there is malformed JSON → 400.
- An empty body is no body, whatever the content type (a bodiless request that carries a
  JSON Content-Type is not malformed).
- A JSON string (key or value, at any depth) holding a lone surrogate (``"\\ud800"``) → 400:
  it is not Unicode text, and the event could not cross the msgpack pipe. Paired surrogate
  escapes (``"\\ud83d\\ude00"``) are one character and fine.
- JSON that Twilio's runtime (JavaScript ``JSON.parse``) would refuse is refused too:
  ``NaN``/``Infinity``; and nesting deeper than ``MAX_JSON_DEPTH`` (the event must cross a
  msgpack pipe) → 400. Integers beyond 64 bits (msgpack's range) become floats, as every
  JSON number is in JavaScript.
- Headers that describe the connection or that only Twilio's gateway may set never reach
  ``event.request.headers``: Twilio's own list (prefixes ``i-twilio-``, ``i-t-``, ``ot-``,
  ``x-amz``, ``x-forwarded-``, ``x-accel-``; names such as ``via``, ``referer``,
  ``x-real-ip``, ``connection``), plus ``host`` and ``te``. A client could otherwise make a
  function believe a header came from the platform. ``X-Twilio-Signature`` stays, as in Twilio.
- Header values that are not valid UTF-8 reach the function with U+FFFD in place of the bad
  bytes, so the event is always plain text.
- Cookies: ``name=value`` pairs split on ``;``; values in double quotes are unquoted and then
  percent-decoded (``+`` stays ``+``, as JavaScript's ``decodeURIComponent``); a value that
  does not decode is kept as sent; pairs without ``=`` are skipped. Several ``Cookie`` headers
  are read in order.
- The header size limit counts each field as ``len(name) + len(value) + 4`` (``": "`` and
  CRLF), i.e. its size on the wire.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple
from urllib.parse import unquote

from multidict import MultiMapping

MAX_JSON_DEPTH = 100

FORM = "application/x-www-form-urlencoded"

# A \uD800-\uDFFF escape: the only way a decoded JSON text can yield a surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

# Hop-by-hop, proxy and gateway-internal headers: they describe the connection or are the
# platform's own, not the client's request (Twilio's runtime strips the same ones).
_EXCLUDED_HEADERS = frozenset({
    "host", "connection", "proxy-authorization", "proxy-authenticate", "proxy-connection",
    "transfer-encoding", "te", "trailer", "upgrade", "expect", "via", "referer", "x-real-ip",
})
# One C-level str.startswith call per header.
_EXCLUDED_PREFIXES = ("i-twilio-", "i-t-", "ot-", "x-amz", "x-forwarded-", "x-accel-")

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


class EventError(Exception):
    """The request cannot become an event; answer ``status`` with the one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ParsedBody(NamedTuple):
    """A request body as the event and the signature check both need it (read once)."""

    kind: Literal["none", "form", "json"]  # which parser its Content-Type selects
    form: list[tuple[str, str]]  # form fields in order ([] unless kind == "form")
    json: dict[str, Any] | None  # the JSON object (None unless kind == "json" and it parsed)
    error: EventError | None = None  # why a body of that kind is malformed (400)


NO_BODY = ParsedBody("none", [], None)


def body_kind(content_type: str) -> Literal["none", "form", "json"]:
    """Which parser a Content-Type value selects (media type only, case-insensitive)."""
    media = content_type.partition(";")[0].strip().lower()
    if media == FORM:
        return "form"
    if media == "application/json" or (media.startswith("application/") and
                                       media.endswith("+json")):
        return "json"
    return "none"


def read_body(content_type: str, body: bytes) -> ParsedBody:
    """Parse a form or JSON body; a malformed one comes back with its ``error`` set.

    The front-end reads a body once, with this: a protected function's signature is checked
    on the result before a malformed body is reported.
    """
    if not body:
        return NO_BODY
    kind = body_kind(content_type)
    if kind == "form":
        return ParsedBody("form", _parse_form(body), None)
    if kind == "json":
        try:
            return ParsedBody("json", [], _parse_json(body))
        except EventError as exc:
            return ParsedBody("json", [], None, exc)
    return NO_BODY


def parse_body(content_type: str, body: bytes) -> ParsedBody:
    """Parse a form or JSON body; raise EventError(400) for one that is malformed."""
    parsed = read_body(content_type, body)
    if parsed.error is not None:
        raise parsed.error
    return parsed


def build_event(
    query: MultiMapping[str] | Iterable[tuple[str, str]],
    content_type: str,
    body: bytes,
    headers: Headers,
    *,
    parsed: ParsedBody | None = None,
) -> dict[str, Any]:
    """The ``event`` dict: query and body collapsed, plus ``event["request"]``.

    ``headers`` must keep repeated fields (aiohttp's ``request.headers`` does). Pass
    ``parsed`` when the body was already parsed (for the signature check) to skip reparsing;
    a JSON object with no query to merge becomes the event itself, not a copy.
    """
    if parsed is None:
        parsed = parse_body(content_type, body)
    items = query.items() if isinstance(query, Mapping) else query
    event = _collapse(items)
    if parsed.kind == "form":
        event.update(_collapse(parsed.form))  # the body wins on a key clash
    elif parsed.json is not None:
        if event:
            event.update(parsed.json)
        else:
            event = parsed.json  # nothing to merge: no copy
    if "request" not in event:  # a query/body key named "request" replaces it (as Twilio)
        event["request"] = _request(headers)
    return event


def check_request_headers(
    raw_headers: Iterable[tuple[bytes | str, bytes | str]],
    max_bytes: int,
    max_fields: int,
) -> None:
    """Raise EventError(431) when the request's header section is over either limit (the
    ``max_header_bytes`` and ``max_header_count`` settings)."""
    count = 0
    size = 0
    for name, value in raw_headers:
        count += 1
        size += len(name) + len(value) + 4
    if count > max_fields:
        raise EventError(431, f"too many request header fields ({count}, limit {max_fields})")
    if size > max_bytes:
        raise EventError(431, f"request headers too large ({size} bytes, limit {max_bytes})")


def _collapse(items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Pairs → dict; a repeated key becomes a list of its values in order."""
    out: dict[str, Any] = {}
    for key, value in items:
        _add(out, key, value)
    return out


def _add(out: dict[str, Any], key: str, value: str) -> None:
    """The one rule for repeated keys (query, form, headers): a list of values in order."""
    if key in out:
        current = out[key]
        if type(current) is list:
            current.append(value)
        else:
            out[key] = [current, value]
    else:
        out[key] = value


def _parse_form(body: bytes) -> list[tuple[str, str]]:
    """urlencoded pairs, as ``parse_qsl(keep_blank_values=True)`` but about twice as fast.

    Keys are literal (no ``a[b]`` nesting); ``a=`` and a bare ``a`` both give ``""``; empty
    pairs (``&&``) are skipped. Bytes that are not UTF-8 become U+FFFD, as in the query string.
    """
    text = body.decode("utf-8", "replace")
    pairs: list[tuple[str, str]] = []
    for field in text.split("&"):
        if not field:
            continue
        key, _, value = field.partition("=")
        pairs.append((_unquote_plus(key), _unquote_plus(value)))
    return pairs


def _unquote_plus(text: str) -> str:
    # most Twilio fields need no decoding at all; skip the call when they don't
    if "+" in text:
        text = text.replace("+", " ")
    if "%" in text:
        text = unquote(text, errors="replace")
    return text


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_int(digits: str) -> int | float:
    # msgpack (the pipe to the worker) carries 64-bit integers only; beyond that, do what
    # Twilio's JavaScript runtime does with any JSON number: a float.
    value = int(digits)
    if len(digits) > 18 and not -(2**63) <= value < 2**64:
        return float(value)
    return value


def _parse_json(body: bytes) -> dict[str, Any]:
    encoding = json.detect_encoding(body)
    try:
        # Decoded strictly here: json.loads(bytes) would let encoded surrogates through.
        text = body.decode(encoding)
    except UnicodeDecodeError:
        shown = "UTF-8" if encoding.startswith("utf-8") else encoding.upper()
        raise EventError(400, f"malformed JSON body: not valid {shown}") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_int=_parse_int)
    except RecursionError:
        raise EventError(400, "malformed JSON body: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and NaN/Infinity above
        raise EventError(400, f"malformed JSON body: {exc}") from None
    if not isinstance(value, dict):
        raise EventError(400, f"JSON body must be an object, got {_json_type(value)}")
    if _too_deep(value, MAX_JSON_DEPTH):
        raise EventError(400, f"malformed JSON body: nested deeper than {MAX_JSON_DEPTH}")
    # Rare: the exact (whole-value) check is paid only when a surrogate escape is present.
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        _refuse_lone_surrogate(value)
    return value


def _refuse_lone_surrogate(value: dict[str, Any]) -> None:
    """EventError(400) if any key or string, at any depth, holds an unpaired surrogate."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(exc.object[exc.start])
        raise EventError(400, f"JSON body holds a lone surrogate (\\u{code:04x}), "
                              "which is not valid Unicode") from None


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _too_deep(value: dict[str, Any] | list[Any], limit: int) -> bool:
    # Iterative, so a hostile body cannot exhaust the stack; only containers are visited.
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > limit:
            return True
        children = container.values() if isinstance(container, dict) else container
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _text(value: str) -> str:
    """aiohttp decodes header bytes with surrogateescape; make such values plain text."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _request(headers: Headers) -> dict[str, Any]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, Any] = {}
    cookie_values: list[str] = []
    for raw_name, raw_value in items:
        name = _text(raw_name).lower()
        if name in _EXCLUDED_HEADERS or name.startswith(_EXCLUDED_PREFIXES):
            continue
        value = _text(raw_value)
        if name == "cookie":
            cookie_values.append(value)
        _add(out, name, value)
    cookies = _parse_cookies(cookie_values) if cookie_values else {}
    return {"headers": out, "cookies": cookies}


def _parse_cookies(values: list[str]) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for header in values:
        for pair in header.split(";"):
            name, eq, value = pair.partition("=")
            name = name.strip()
            if not eq or not name or name in cookies:  # the first of a repeated name wins
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            if "%" in value:
                # a value that does not decode is kept as sent, like the cookie package
                # Twilio's runtime uses
                with contextlib.suppress(UnicodeDecodeError):
                    value = unquote(value, errors="strict")
            cookies[name] = value
    return cookies
