"""Calls waiting for a worker: a FIFO that answers for the calls it has to give up on.

A queued call leaves the queue in one of three ways: a worker takes it (`pop`), it waited
longer than `queue_timeout` (503), or its client hung up (499, so that no worker ever runs a
call nobody is waiting for). One sweep timer runs while the queue is not empty; per-call
timers would cost a heap entry per request.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from fnd.daemon import calls
from fnd.daemon.calls import Call, text_outcome

SWEEP_INTERVAL = 0.05  # seconds between checks for timed-out calls and departed clients
CLIENT_GONE = 499  # nginx's "client closed request": logged, never actually sent


def client_gone(call: Call) -> bool:
    # aiohttp leaves handlers running when the peer disconnects (handler_cancellation is off),
    # but the connection's transport is closed at once: that is the signal.
    transport = call.transport
    return transport is not None and transport.is_closing()


class WaitQueue:
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.timeout = timeout
        self._loop = loop
        self._calls: deque[Call] = deque()  # oldest first; resolved ones are skipped
        self._sweeping = False

    def __len__(self) -> int:
        return len(self._calls)

    def push(self, call: Call) -> None:
        self._calls.append(call)
        if not self._sweeping:
            self._sweeping = True
            self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    def push_front(self, call: Call) -> None:
        """Put a call back at the head (a worker popped it but may not run it)."""
        self._calls.appendleft(call)
        if not self._sweeping:
            self._sweeping = True
            self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    def pop(self) -> Call | None:
        """The oldest call still waiting (its client still there), or None."""
        queued = self._calls
        while queued:
            call = queued.popleft()
            if call.result.done():
                continue
            if client_gone(call):
                self._drop(call)
                continue
            return call
        return None

    def calls(self) -> list[Call]:
        return [call for call in self._calls if not call.result.done()]

    def longest_wait(self) -> float:
        """Seconds the oldest queued call has waited (0 with an empty queue)."""
        return time.perf_counter() - self._calls[0].queued if self._calls else 0.0

    def fail_all(self, reason: str) -> None:
        """Answer every waiting call with 503 (the daemon is stopping)."""
        while self._calls:
            self._calls.popleft().resolve(
                text_outcome(503, calls.OVERLOAD, reason, Retry_After="1")
            )

    def _sweep(self) -> None:
        queued = self._calls
        limit = time.perf_counter() - self.timeout
        while queued and (queued[0].result.done() or queued[0].queued <= limit):
            queued.popleft().resolve(text_outcome(
                503, calls.OVERLOAD, f"no worker became free within {self.timeout:g} s",
                Retry_After="1",
            ))
        if any(client_gone(call) for call in queued):
            for call in queued:
                if client_gone(call):
                    self._drop(call)
            self._calls = deque(call for call in queued if not call.result.done())
        self._sweeping = bool(self._calls)
        if self._sweeping:
            self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    @staticmethod
    def _drop(call: Call) -> None:
        call.resolve(text_outcome(
            CLIENT_GONE, calls.REJECTED, "client disconnected while queued; not run"
        ))
