"""The HTTP front-end: route, check, build the event, hand the call to the pool, answer.

It runs no user code: functions run in workers, assets are files served from here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import secrets
import time
import traceback
from html import escape
from typing import Any

from aiohttp import StreamReader, web
from multidict import CIMultiDict

from fnd.daemon import calls
from fnd.daemon.calls import Call, Invocation, Outcome, text_outcome
from fnd.daemon.config import Config, ConfigError
from fnd.daemon.http import answer_stream
from fnd.daemon.http.answer_stream import AnswerBudget, AnswerFacts, StreamedAnswer
from fnd.daemon.http.asset_files import AssetFiles, AssetGone
from fnd.daemon.http.asset_response import AssetResponse
from fnd.daemon.http.event import EventError, build_event, check_request_headers, read_body
from fnd.daemon.http.hostname import url_host
from fnd.daemon.http.origin import Origin, parse_proxies, read_origin, shown
from fnd.daemon.http.request_facts import twilio_ids, user_agent
from fnd.daemon.http.signature_gate import SignatureGate
from fnd.daemon.logs import get_logger
from fnd.daemon.pool.pool import Pool
from fnd.daemon.project import Project, Route
from fnd.daemon.stats import Stats
from fnd.protocol import trace

INVOCATION_HEADER = answer_stream.INVOCATION_HEADER
_FUNCTION_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
# Never served, whatever the path (README: 405): a tunnel or an echo of the request's headers.
_REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_log = get_logger("fnd")
_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
}


class InvocationIds:
    """Unique, cheap ids: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"


# Turns of the event loop from aiohttp parsing a request to handle() running it.
_TURNS_TO_HANDLER = 2


class FrontEnd:
    def __init__(self, config: Config, project: Project, pool: Pool, stats: Stats) -> None:
        self.config = config
        self.project = project
        self.assets = AssetFiles(str(project.root))
        self.pool = pool
        self.stats = stats
        self.ids = InvocationIds()
        self.draining = False  # the daemon is stopping: answer, then close the connection
        self.handling = 0  # requests in handle(): the drain waits for them before the pool
        # Dev mode only: the problems of the last reload, which failed; every request gets them.
        self.reload_problems: list[str] | None = None
        # Looked up once: asyncio.get_running_loop() costs a getpid() syscall on 3.11.
        self._loop = asyncio.get_running_loop()
        self._context_defaults = config.context_defaults()
        self._proxies = parse_proxies(config)
        self._gate = SignatureGate(config, self._context_defaults.get("AUTH_TOKEN"))
        self._fixed_domain = _fixed_domain(config)
        # Fixed at start (a reload keeps it): the bound holds across generations.
        self.budget = AnswerBudget(config.max_buffered_mb * 1024 * 1024)

    def set_project(self, config: Config, project: Project) -> None:
        """Swap in a re-scanned project (reload): one assignment, so no request sees a mix."""
        defaults = config.context_defaults()
        try:
            proxies = parse_proxies(config)
        except ConfigError as exc:  # the pool already runs the new code: keep serving
            _log.error("reload: trusted_proxies unchanged", reason=str(exc))
            proxies = self._proxies
        gate = SignatureGate(config, defaults.get("AUTH_TOKEN"))
        assets = AssetFiles(str(project.root))
        self.config, self.project, self.assets = config, project, assets
        self._context_defaults, self._proxies, self._gate = defaults, proxies, gate
        self._fixed_domain = _fixed_domain(config)

    async def handed_over(self, timeout: float) -> float:
        """Wait (at most `timeout` s) until no request is between its arrival and its answer,
        and return what is left of `timeout`. The drain calls it before the pool starts
        refusing: a request read just before the listener closed must find the pool serving,
        not answer 503 in a restart that fails nothing.

        A request aiohttp parses in one turn of the loop enters handle() two turns later (its
        connection's task wakes, then the request's own task runs), so `handling` must stay
        at 0 for more turns than that, not only for one."""
        loop = self._loop
        deadline = loop.time() + timeout
        quiet = 0  # successive turns with no request in handle()
        while loop.time() < deadline:
            if self.handling:
                quiet = 0
                await asyncio.sleep(0.005)
                continue
            quiet += 1
            if quiet > _TURNS_TO_HANDLER + 1:  # one more: its turn may run after our check
                break
            await asyncio.sleep(0)
        return max(0.0, deadline - loop.time())

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """One request: origin → route → checks → signature gate → pool (or asset) → answer.

        Its log line is written once, by its Invocation (daemon/calls.py): here for an
        answer the front-end decides, by the call itself once a function call is over.
        """
        self.handling += 1
        try:
            return await self._handle(request)
        finally:
            self.handling -= 1

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        received = time.perf_counter()
        origin = read_origin(request, self._proxies)  # the one read of the forwarded headers
        headers = request.headers
        invocation = Invocation(self.stats, origin.request_id or self.ids.next(),
                                request.method, request.path, received, origin.client,
                                trace=trace.accept(headers.getall("traceparent", ()),
                                                   headers.getall("tracestate", ())),
                                user_agent=user_agent(headers.get("User-Agent")))
        try:
            response = await self._route(request, origin, invocation)
        except EventError as exc:  # the request cannot go on: a client's mistake, or ours
            kind = calls.ERROR if exc.status >= 500 else calls.REJECTED
            response = self._answer(invocation, text_outcome(exc.status, kind, exc.reason))
        except Exception as exc:  # a bug here fails this one request, never the connection
            response = self._internal_error(request, exc, invocation)
        if self.draining or response.status == 408:
            response.force_close()  # "Connection: close": the client (nginx) moves on
        return response

    async def _route(
        self, request: web.BaseRequest, origin: Origin, invocation: Invocation
    ) -> web.StreamResponse:
        config, project, assets = self.config, self.project, self.assets  # one generation
        if self.reload_problems is not None:
            return self._answer(invocation, _reload_failed(
                self.reload_problems, "text/html" in request.headers.get("Accept", "")))
        if request.method in _REFUSED_METHODS:
            return self._answer(invocation, text_outcome(
                405, calls.REJECTED, f"method {request.method} is not allowed",
                Allow="GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"))
        expect = request.headers.get("Expect")
        if expect is not None and expect.lower() != "100-continue":
            raise EventError(417, f"Expect {shown(expect)} is not supported "
                                  "(only 100-continue is)")
        path = request.path
        route = project.lookup(path) if path != "/" else project.index()
        if origin.refused is not None:  # a bad Host is refused whatever the path
            raise EventError(400, origin.refused)
        if route is None:
            return self._answer(invocation, text_outcome(
                404, calls.REJECTED, f"no function or asset at {path}"))
        if request.method == "OPTIONS" and config.cors:
            return self._answer(invocation, Outcome(204, list(_CORS_HEADERS.items()), b"",
                                                    calls.REJECTED))
        if route.kind == "asset":
            return await self._asset(request, origin, route, assets, invocation)
        invocation.route = route.path
        return await self._function(request, origin, route, invocation)

    async def _function(
        self, request: web.BaseRequest, origin: Origin, route: Route, invocation: Invocation
    ) -> web.StreamResponse:
        config = self.config
        if request.method not in _FUNCTION_METHODS and request.method != "OPTIONS":
            raise EventError(405, f"method {request.method} is not allowed")
        check_request_headers(request.raw_headers, config.max_header_bytes,
                              config.max_header_count)
        body = await _read_body(request, config.max_request_body, config.body_timeout)
        content_type = request.headers.get("Content-Type", "")
        parsed = read_body(content_type, body)  # the one read; a malformed body keeps its error
        if route.visibility == "protected":
            # Before the body's problem: an unsigned client gets 401 whatever it sends.
            denied = self._gate.check(request, origin, route, invocation.id, body, parsed)
            if denied is not None:
                return self._answer(invocation, denied)
        if parsed.error is not None:
            raise parsed.error
        # After the signature check: unsigned clients never see a protected function's problem.
        if route.error is not None:
            return self._answer(invocation, _broken(route.error, invocation.id, config.dev))
        event = build_event(request.query, content_type, body, request.headers, parsed=parsed)
        invocation.twilio = twilio_ids(event, request.raw_headers)
        context: dict[str, Any] = dict(self._context_defaults)
        # The configured domain, else the host the client used (as the signature check).
        context["DOMAIN_NAME"] = self._fixed_domain or origin.host or ""
        # Twilio spreads the project's variables over the defaults: PATH in .env wins.
        context.setdefault("PATH", request.path)
        call = Call(
            invocation=invocation,
            id=invocation.id,
            function={"name": route.path, "file": str(route.file)},
            event=event,
            context=context,
            timeout=config.timeout_for(route.path),
            result=self._loop.create_future(),
            transport=request.transport,  # lets the pool drop it if the client leaves
            isolated=config.isolated(route.path),
        )
        outcome = await self.pool.invoke(call)  # the call writes its own log line
        if len(outcome.body) > answer_stream.STREAM_ABOVE:
            return StreamedAnswer(outcome.status, _headers(outcome, invocation.id), outcome.body,
                                  self.budget, config.send_timeout,
                                  AnswerFacts(invocation.id, route.path, call.worker_pid))
        return _response(outcome, invocation.id)

    async def _asset(
        self, request: web.BaseRequest, origin: Origin, route: Route, assets: AssetFiles,
        invocation: Invocation,
    ) -> web.StreamResponse:
        if route.visibility == "protected":
            denied = self._gate.check(request, origin, route, invocation.id)
            if denied is not None:
                return self._answer(invocation, denied)
        if request.method not in ("GET", "HEAD"):
            return self._answer(invocation, text_outcome(
                405, calls.REJECTED, f"method {request.method} is not allowed",
                Allow="GET, HEAD, OPTIONS"))
        # The one executor hop of an asset: open and fstat (blocking calls).
        try:
            opened = await self._loop.run_in_executor(None, assets.open, route)
        except AssetGone as exc:
            return self._answer(invocation, text_outcome(404, calls.REJECTED, str(exc)))

        def sent(status: int) -> None:  # once the file is sent (or the client left)
            invocation.end(status, calls.OK if status < 400 else calls.REJECTED,
                           response_bytes=response.content_length)

        response = AssetResponse(opened, route.file, self._loop, sent, self.config.send_timeout,
                                 invocation.id)
        response.headers[INVOCATION_HEADER] = invocation.id
        return response

    def _answer(self, invocation: Invocation, outcome: Outcome) -> web.Response:
        """A response decided by the daemon itself: log it and send it."""
        invocation.answer(outcome)
        return _response(outcome, invocation.id)

    def _internal_error(
        self, request: web.BaseRequest, exc: Exception, invocation: Invocation
    ) -> web.Response:
        """500 with a one-line reason; the traceback goes to the log, as one line."""
        name = type(exc).__name__
        _log.error("internal error", invocation_id=invocation.id, path=request.path,
                   error=f"{name}: {exc}", traceback="".join(traceback.format_exception(exc)))
        outcome = text_outcome(500, calls.ERROR, f"internal error: {name}")
        try:
            return self._answer(invocation, outcome)
        except Exception:  # even the invocation line failed: still answer the client
            return _response(outcome, invocation.id)


def _fixed_domain(config: Config) -> str | None:
    """``DOMAIN_NAME`` from ``.env`` wins, then ``public_url``'s host; None: the request's."""
    return config.env.get("DOMAIN_NAME") or (
        url_host(config.public_url) if config.public_url else None) or None


def _broken(error: str, invocation_id: str, dev: bool) -> Outcome:
    """The 500 of a function that cannot load: the reason (with its path) is logged; a
    production client gets a line without paths and the id to find that log line."""
    if dev:
        return text_outcome(500, calls.ERROR, error)
    outcome = text_outcome(500, calls.ERROR,
                           f"the function could not be loaded (invocation {invocation_id})")
    return dataclasses.replace(outcome, reason=error)


async def _read_body(request: web.BaseRequest, limit: int, timeout: float) -> bytes:
    """The whole body; 413 beyond ``limit`` bytes, 408 when not complete within ``timeout``
    (counted from now, as the head has just arrived; a body that came with its head needs
    no timer)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise EventError(413, f"request body of {declared} bytes is over the {limit} byte limit")
    if not request.body_exists:
        return b""
    content = request.content
    if content.is_eof():
        return await _collect(content, limit)
    if (request.version >= (1, 1) and request.transport is not None
            and request.headers.get("Expect", "").lower() == "100-continue"):
        request.transport.write(_CONTINUE)  # the client waits for this before its body
    try:
        async with asyncio.timeout(timeout):
            return await _collect(content, limit)
    except TimeoutError:
        raise EventError(408, f"request body not complete within {timeout:g} s") from None


async def _collect(content: StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in content.iter_any():
            size += len(chunk)
            if size > limit:
                raise EventError(413, f"request body is over the {limit} byte limit")
            chunks.append(chunk)
    except ConnectionResetError:  # aiohttp's word for "the client hung up mid-body"
        raise EventError(400, "client closed the connection before the body was complete"
                         ) from None
    return b"".join(chunks)


# Framing is the daemon's job: a function cannot set these and break the HTTP stream.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})


def _headers(outcome: Outcome, invocation_id: str) -> CIMultiDict[str]:
    headers = CIMultiDict(
        (name, value) for name, value in outcome.headers if name.lower() not in _FRAMING_HEADERS
    )
    headers[INVOCATION_HEADER] = invocation_id
    return headers


def _response(outcome: Outcome, invocation_id: str) -> web.Response:
    return web.Response(status=outcome.status, body=outcome.body or None,
                        headers=_headers(outcome, invocation_id))


def _reload_failed(problems: list[str], html: bool) -> Outcome:
    """Dev mode's answer while the last reload failed: every problem, one per line (a page
    for a browser)."""
    title = "fnd --dev: the last reload failed; fix these and save"
    reason = f"reload failed: {len(problems)} problem(s)"
    if html:
        items = "".join(f"<li><pre>{escape(problem)}</pre></li>" for problem in problems)
        page = (f"<!doctype html><meta charset=utf-8><title>reload failed</title>"
                f"<h1>{escape(title)}</h1><ul>{items}</ul>\n")
        return Outcome(500, [("Content-Type", "text/html; charset=utf-8")], page.encode(),
                       calls.ERROR, reason)
    lines = "".join(f"  {problem}\n" for problem in problems)
    body = f"{title} (the previous code is not served meanwhile):\n{lines}".encode()
    return Outcome(500, [("Content-Type", "text/plain; charset=utf-8")], body, calls.ERROR,
                   reason)
