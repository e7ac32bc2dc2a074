"""One invocation as the daemon tracks it, and the outcome it ends with."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fnd.protocol.messages import FunctionRef

# Outcomes, as counted and logged: every accepted request ends in exactly one
# (docs/pool.md#one-answer-per-call).
OK = "ok"  # the function answered (any status it chose)
ERROR = "error"  # the function failed: 500 from an exception, callback(error), bad response
TIMEOUT = "timeout"  # 504
CRASH = "crash"  # 502: the worker died mid-invocation
OVERLOAD = "overload"  # 503: queue full or waited too long
REJECTED = "rejected"  # 4xx decided by the daemon (404, 400, 401, 413, 431 ...)


@dataclass
class Outcome:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    outcome: str
    reason: str | None = None


def text_outcome(status: int, outcome: str, reason: str, **headers: str) -> Outcome:
    """A daemon-made answer: one readable line, also used as the log reason."""
    body = (reason + "\n").encode()
    pairs = [("Content-Type", "text/plain; charset=utf-8")]
    pairs.extend((name.replace("_", "-"), value) for name, value in headers.items())
    return Outcome(status, pairs, body, outcome, reason)


@dataclass(eq=False)
class Call:
    id: str
    function: FunctionRef
    event: dict[str, Any]
    context: dict[str, Any]
    timeout: float
    method: str
    path: str
    received: float  # time.perf_counter() when the request arrived (uvloop's clock is ms)
    result: asyncio.Future[Outcome]
    queued: float = 0.0  # time.perf_counter() when the pool was asked for a worker
    started: float = 0.0  # time.perf_counter() when a worker took it
    worker_pid: int | None = None
    cpu: float | None = None
    rss: int | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    # The client's connection: a queued call whose client hung up is dropped, not run.
    transport: asyncio.BaseTransport | None = field(default=None, repr=False)
    client: str | None = None  # the client's address, for the log line
    isolated: bool = False  # isolation = "invocation": a fresh worker, killed after DONE

    @property
    def queue_wait(self) -> float:
        return max(0.0, self.started - self.queued) if self.started else 0.0

    def resolve(self, outcome: Outcome) -> bool:
        """Set the outcome once; later attempts (a late result after a kill) are ignored."""
        if self.result.done():  # also when cancelled: the request handler is gone
            return False
        self.result.set_result(outcome)
        return True
