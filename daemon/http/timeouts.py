"""Connection limits aiohttp lacks: heads in time, connections counted, no HTTP/0.9.

aiohttp closes a connection that has no complete request after ``keepalive_timeout``, counted
from the connection's start or the previous response, whatever arrives meanwhile. fnd splits
that as nginx does (``client_header_timeout`` / ``keepalive_timeout``):

- ``header_timeout``: from a new connection, or from the first byte of a later request, the
  request head must be complete within this time; else the client gets 408 and the
  connection is closed (a new connection that sent nothing is just closed). A client that
  trickles header bytes (slowloris) cannot hold a connection longer than this.
- ``keepalive_timeout``: a connection with no request in progress and no byte of the next one
  is closed after this time (aiohttp's own timer, which stands aside while a head arrives).

The cost for a well-behaved client is one clock read per request and one timer per connection,
re-armed lazily when it fires; body bytes never touch it.

Two more rules live here, at the connection (docs/operating.md#slow-clients):

- ``max_connections``: a connection beyond it gets a minimal 503 (``Retry-After: 1``) and is
  closed at once, before any request is read; ``connection refused`` is logged at most once a
  second, with the count refused since the last line.
- An HTTP/0.9 request (``GET /x`` with no version) is answered 400 and closed, never with a
  version-less 200: it comes from a scanner or a broken proxy, never from a client of fnd.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import HttpVersion10, StreamReader, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from fnd.daemon.logs import get_logger

_log = get_logger("fnd")
_HTTP09 = "HTTP/0.9 requests are not supported"
_BUSY_TEXT = b"too many connections, try again\n"
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Retry-After: 1\r\nConnection: close\r\n%sContent-Length: %d\r\n\r\n%s")


def _request_class(server_header: str) -> type[web.BaseRequest]:
    """aiohttp's request, whose answers all say ``Server: <server_header>`` (none if empty).

    ``_prepare_hook`` is aiohttp's own step between a response's headers being filled in
    (with its ``Python/3.11 aiohttp/x`` default) and written: the one place every answer
    passes, fnd's own (functions, assets, errors, 404s, 503s) and aiohttp's (a bad request).
    """
    if server_header:
        async def prepare_hook(self: web.BaseRequest, response: web.StreamResponse) -> None:
            response.headers["Server"] = server_header
    else:
        async def prepare_hook(self: web.BaseRequest, response: web.StreamResponse) -> None:
            response.headers.popall("Server", None)
    return type("FndRequest", (web.BaseRequest,), {"_prepare_hook": prepare_hook})


class _HeadTimeoutHandler(RequestHandler):
    """aiohttp's per-connection protocol, plus the request-head deadline.

    It leans on RequestHandler internals (``_request_count``, ``_messages``,
    ``_process_keepalive``); tests/e2e/test_front_hardening.py checks the behaviour end to end.
    """

    def __init__(self, manager: TimeoutServer, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager
        self._head_timeout = header_timeout
        self._head_since: float | None = None  # when the current, incomplete head began
        self._head_bytes = False  # has a byte of it arrived (not so at a connection's start)
        self._head_timer: asyncio.TimerHandle | None = None
        self._last_body: Any = None  # the last request's payload: bytes of it are no head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._server.admit():
            self._manager = None  # never counted: connection_lost has nothing to undo
            transport.write(self._server.busy)  # type: ignore[attr-defined]
            transport.close()  # after the 503 is flushed
            return
        super().connection_made(transport)
        self._start_head_clock()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:  # refused at connection_made: closing, nothing to read
            return
        if self._head_since is None and (self._last_body is None or self._last_body.is_eof()):
            self._start_head_clock()
        if self._head_since is not None:
            self._head_bytes = True
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a head is complete (bytes after it start a new one)
            self._refuse_http09(self._request_count - count)
            self._head_since = None
            self._head_bytes = False
            self._last_body = self._messages[-1][1] if self._messages else None

    def _refuse_http09(self, new: int) -> None:
        """Turn each new HTTP/0.9 request into aiohttp's own 400 (which closes)."""
        messages = self._messages
        for index in range(len(messages) - new, len(messages)):
            message = messages[index][0]
            if isinstance(message, RawRequestMessage) and message.version < HttpVersion10:
                _log.info("request refused", status=400, reason=_HTTP09)
                messages[index] = (_ErrInfo(status=400, exc=BadHttpMessage(_HTTP09),
                                            message=_HTTP09), EMPTY_PAYLOAD)

    def _process_keepalive(self) -> None:
        if self._head_since is not None:  # a head is arriving: its own deadline is in charge
            self._keepalive_handle = None
            return
        super()._process_keepalive()

    def _start_head_clock(self) -> None:
        now = self._loop.time()
        self._head_since = now
        if self._head_timer is None:
            self._head_timer = self._loop.call_at(now + self._head_timeout, self._check_head)

    def _check_head(self) -> None:
        self._head_timer = None
        since = self._head_since
        if since is None or self.transport is None:
            return
        now = self._loop.time()
        if now < since + self._head_timeout or self._request_in_progress:
            # A later head began after this timer was set, or a pipelined head waits behind a
            # request still being answered: look again when its time would be up.
            when = max(since + self._head_timeout, now + 1.0)
            self._head_timer = self._loop.call_at(when, self._check_head)
            return
        if not self._head_bytes:  # a connection opened and never used: nothing to answer
            self.force_close()
            return
        reason = f"request head not complete within {self._head_timeout:g} s\n".encode()
        peer = self.transport.get_extra_info("peername")
        _log.info("request head timeout", client=str(peer[0]) if peer else None,
                  header_timeout=self._head_timeout, status=408)
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Connection: close\r\n%sContent-Length: %d\r\n\r\n%s"
            % (self._server.server_line, len(reason), reason)
        )
        self.force_close()  # the transport flushes the 408 before it closes


class TimeoutServer(web.Server):
    """``web.Server`` whose connections enforce the module doc's rules."""

    def __init__(self, handler: Any, *, header_timeout: float, max_connections: int,
                 server_header: str, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._request_type = _request_class(server_header)
        # the raw answers written here, before aiohttp has a request: the same Server line
        self.server_line = f"Server: {server_header}\r\n".encode() if server_header else b""
        self.busy = _BUSY % (self.server_line, len(_BUSY_TEXT), _BUSY_TEXT)
        self._header_timeout = header_timeout
        self._max_connections = max_connections
        self._refused = 0  # since the last "connection refused" line
        self._refused_logged = -1.0

    def admit(self) -> bool:
        """Whether one more connection may be served; a refusal is counted and logged."""
        if len(self._connections) < self._max_connections:
            return True
        self._refused += 1
        now = self._loop.time()
        if now - self._refused_logged >= 1.0:  # a flood of refusals: one line a second
            _log.warning("connection refused", max_connections=self._max_connections,
                         refused=self._refused, status=503,
                         reason="max_connections client connections are open")
            self._refused, self._refused_logged = 0, now
        return False

    def _make_request(self, message: RawRequestMessage, payload: StreamReader,
                      protocol: RequestHandler, writer: AbstractStreamWriter,
                      task: asyncio.Task[None]) -> web.BaseRequest:
        return self._request_type(message, payload, protocol, writer, task, self._loop)

    def __call__(self) -> RequestHandler:
        return _HeadTimeoutHandler(self, loop=self._loop, header_timeout=self._header_timeout,
                                   **self._kwargs)
