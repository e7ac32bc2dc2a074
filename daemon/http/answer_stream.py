"""Large answers: held within a budget, streamed with back-pressure, cut off when not read.

docs/operating.md#slow-clients. An answer up to ``STREAM_ABOVE`` bytes is handed to the
transport whole (one write, no timer: the hello-world path). A larger one is:

- counted against ``AnswerBudget`` (``max_buffered_mb`` across all connections) for as long
  as it is being sent; one that would go beyond it is answered 503 with ``Retry-After``
  instead, and logged (``answer refused``), so slow clients cannot make the daemon hold
  more than that in answers;
- written ``CHUNK`` bytes at a time, waiting for the transport to drain below its high-water
  mark between chunks, so the transport never holds more than a chunk past that mark;
- cut off when the client takes nothing for ``send_timeout`` (a drain that does not come):
  the connection is aborted, which frees its buffers, and ``send timeout`` is logged.

The log lines carry the invocation id, function and worker pid, as the call's own line does
(which records what the function answered; these say what became of it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NoReturn

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict

from fnd.daemon.http import memory
from fnd.daemon.logs import get_logger

_log = get_logger("fnd")

STREAM_ABOVE = 64 * 1024  # the transports' default high-water mark: beyond it, stream
CHUNK = 64 * 1024
INVOCATION_HEADER = "X-Fnd-Invocation-Id"
_TRIM_AFTER = 16 * 1024 * 1024  # a burst this large is worth a malloc_trim once it is over


class AnswerBudget:
    """The bytes of large answers being sent to clients, across all connections."""

    def __init__(self, limit: int, trim: Callable[[], None] = memory.trim) -> None:
        self.limit = limit
        self.held = 0
        self._peak = 0  # the most held since the last trim
        self._trim = trim

    def reserve(self, size: int) -> bool:
        """Count ``size`` bytes as held; False (nothing counted) if that goes over the limit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        self._peak = max(self._peak, self.held)
        return True

    def release(self, size: int) -> None:
        self.held -= size
        if self.held == 0 and self._peak >= _TRIM_AFTER:
            self._peak = 0
            self._trim()  # the burst is over: the heap it grew goes back


class AnswerFacts:
    """Who an answer belongs to, for its log lines."""

    __slots__ = ("invocation_id", "function", "worker_pid")

    def __init__(self, invocation_id: str, function: str | None, worker_pid: int | None) -> None:
        self.invocation_id = invocation_id
        self.function = function
        self.worker_pid = worker_pid


class StreamedAnswer(web.StreamResponse):
    """A large answer, sent as the module doc says; its body is dropped once sent."""

    def __init__(self, status: int, headers: CIMultiDict[str], body: bytes,
                 budget: AnswerBudget, send_timeout: float, facts: AnswerFacts) -> None:
        super().__init__(status=status, headers=headers)
        self._answer = body
        self._budget = budget
        self._send_timeout = send_timeout
        self._facts = facts

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        body, self._answer = self._answer, b""
        size = len(body)
        if request.method == "HEAD":  # the length alone: nothing is held
            self.content_length = size
            return await super().prepare(request)
        if not self._budget.reserve(size):
            return await self._refuse(request, size)
        try:
            self.content_length = size
            writer = await super().prepare(request)
            assert isinstance(writer, StreamWriter)
            await self._send(request, writer, memoryview(body))
            await super().write_eof()
            return writer
        finally:
            del body
            self._budget.release(size)

    async def _send(self, request: web.BaseRequest, writer: StreamWriter,
                    view: memoryview) -> None:
        for start in range(0, len(view), CHUNK):
            await writer.write(view[start:start + CHUNK], drain=False)
            if not await drained(request, writer, self._send_timeout):
                cut_off(request, self._send_timeout, self._facts, start + CHUNK, len(view))


    async def _refuse(self, request: web.BaseRequest, size: int) -> AbstractStreamWriter | None:
        facts = self._facts
        limit_mb = self._budget.limit // (1024 * 1024)
        reason = (f"the daemon already holds {limit_mb} MB of answers for clients "
                  f"(max_buffered_mb); try again")
        _log.warning("answer refused", invocation_id=facts.invocation_id,
                     function=facts.function, worker_pid=facts.worker_pid, status=503,
                     size=size, held=self._budget.held, reason=reason)
        self.set_status(503)
        kept = self.headers.get(INVOCATION_HEADER)
        self.headers.clear()  # the function's headers described its own answer
        if kept is not None:
            self.headers[INVOCATION_HEADER] = kept
        self.headers["Content-Type"] = "text/plain; charset=utf-8"
        self.headers["Retry-After"] = "1"
        text = (reason + "\n").encode()
        self.content_length = len(text)
        writer = await super().prepare(request)
        await super().write(text)
        await super().write_eof()
        return writer


async def drained(request: web.BaseRequest, writer: AbstractStreamWriter, timeout: float) -> bool:
    """Wait until the transport is below its high-water mark; False if the client took
    nothing for ``timeout`` seconds. No timer unless the transport is actually full."""
    if not request.protocol.writing_paused:
        return True
    try:
        async with asyncio.timeout(timeout):
            await writer.drain()
    except TimeoutError:
        return False
    return True


def cut_off(request: web.BaseRequest, timeout: float, facts: AnswerFacts, written: int,
            size: int) -> NoReturn:
    """Log why, abort the connection (which frees what its transport holds), stop sending."""
    _log.warning("send timeout", invocation_id=facts.invocation_id, function=facts.function,
                 worker_pid=facts.worker_pid, send_timeout=timeout, written=min(written, size),
                 size=size, reason=f"the client took nothing for {timeout:g} s: connection "
                                   "closed, its buffers freed")
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise ConnectionResetError("send timeout")
