"""A small HTTP client for fnd's own tools (`fnd invoke`, ``fnd.testing``).

It builds requests the way Twilio sends webhooks (form or JSON bodies, optionally signed with
``X-Twilio-Signature`` exactly as Twilio computes it) and sends them over TCP or a unix
socket with the standard library, so the tools need nothing beyond fnd's dependencies.
"""

from __future__ import annotations

import hashlib
import http.client
import json as jsonlib
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from multidict import CIMultiDict, CIMultiDictProxy
from twilio.request_validator import RequestValidator

Pairs = Mapping[str, Any] | Iterable[tuple[str, Any]]
SIGNATURE_HEADER = "X-Twilio-Signature"


@dataclass
class Request:
    method: str
    target: str  # path and query, as sent on the request line
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    form: list[tuple[str, str]] = field(default_factory=list)  # what Twilio signs
    is_json: bool = False


@dataclass(frozen=True)
class Reply:
    """A response: ``status``, ``headers`` (case-insensitive, repeated names kept), ``body``."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    @property
    def cookies(self) -> list[str]:
        """Every ``Set-Cookie`` header value, in order."""
        return self.headers.getall("Set-Cookie", [])

    @property
    def invocation_id(self) -> str:
        return self.headers.get("X-Fnd-Invocation-Id", "")


def build(
    method: str,
    path: str,
    *,
    params: Pairs | None = None,
    data: Pairs | None = None,
    json: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Request:
    """A request for ``path`` with a query (``params``) and a form (``data``) or JSON body."""
    if data is not None and json is not None:
        raise ValueError("pass data (a form) or json, not both")
    target = path if path.startswith("/") else "/" + path
    query = _pairs(params)
    if query:
        target += ("&" if "?" in target else "?") + urlencode(query)
    request = Request(method.upper(), target, dict(headers or {}))
    if data is not None:
        request.form = _pairs(data)
        request.body = urlencode(request.form).encode()
        request.headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif json is not None:
        request.body = jsonlib.dumps(json).encode()
        request.is_json = True
        request.headers.setdefault("Content-Type", "application/json")
    return request


def sign(request: Request, auth_token: str, base_url: str) -> None:
    """Add ``X-Twilio-Signature`` as Twilio computes it for ``base_url`` + the target.

    JSON bodies are signed as Twilio signs them: their SHA-256 goes into the ``bodySHA256``
    query parameter and the signature covers the URL alone.
    """
    params: list[tuple[str, str]] | dict[str, str] = request.form
    if request.is_json:
        digest = hashlib.sha256(request.body).hexdigest()
        request.target += ("&" if "?" in request.target else "?") + f"bodySHA256={digest}"
        params = {}
    validator = RequestValidator(auth_token)
    url = base_url.rstrip("/") + request.target
    request.headers[SIGNATURE_HEADER] = validator.compute_signature(url, _Multi(params))


def send(listen: str, request: Request, timeout: float = 60.0) -> Reply:
    """Send to ``listen``: ``http://host:port`` or ``unix:/path`` (as `fnd serve` logs it)."""
    connection: http.client.HTTPConnection
    if listen.startswith("unix:"):
        connection = _UnixConnection(listen[len("unix:"):], timeout)
    else:
        hostport = listen.removeprefix("http://").rstrip("/")
        connection = http.client.HTTPConnection(hostport, timeout=timeout)
    try:
        connection.request(request.method, request.target, body=request.body or None,
                           headers=request.headers)
        response = connection.getresponse()
        body = response.read()
        headers: CIMultiDict[str] = CIMultiDict(response.getheaders())
        return Reply(response.status, response.reason, CIMultiDictProxy(headers), body)
    finally:
        connection.close()


def host_header(listen: str) -> str:
    """The Host header `send` uses, i.e. the host part of the URL the daemon sees."""
    if listen.startswith("unix:"):
        return "localhost"
    return listen.removeprefix("http://").rstrip("/")


def _pairs(values: Pairs | None) -> list[tuple[str, str]]:
    if values is None:
        return []
    items = values.items() if isinstance(values, Mapping) else values
    out: list[tuple[str, str]] = []
    for key, value in items:
        if isinstance(value, list | tuple):
            out.extend((key, str(item)) for item in value)
        else:
            out.append((key, str(value)))
    return out


class _Multi(dict[str, list[str]]):
    """Repeated form keys for RequestValidator, which reads them through ``getall``."""

    def __init__(self, pairs: list[tuple[str, str]] | dict[str, str]) -> None:
        super().__init__()
        items = pairs.items() if isinstance(pairs, dict) else pairs
        for key, value in items:
            self.setdefault(key, []).append(value)

    def getall(self, key: str) -> list[str]:
        return self[key]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock
