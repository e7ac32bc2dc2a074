"""One request as the daemon tracks it, the outcome it ends with, and its one log line.

Every request has an Invocation from the moment it arrives; a function call is also a Call.
The log line (docs/operating.md#6-logs) is written by ``Invocation.end``, once: for an answer
the front-end decides, when it decides it; for a Call, when the call is complete (answered,
and the worker it ran on, if any, done with it), whichever of the front-end, queue or pool
ended it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fnd.protocol.messages import FunctionRef, TraceHeaders
from fnd.protocol.trace import Trace, new_trace

if TYPE_CHECKING:
    from fnd.daemon.stats import Stats

# Outcomes, as counted and logged: every accepted request ends in exactly one
# (docs/pool.md#one-answer-per-call).
OK = "ok"  # the function answered (any status it chose)
ERROR = "error"  # the function failed: 500 from an exception, callback(error), bad response
TIMEOUT = "timeout"  # 504
CRASH = "crash"  # 502: the worker died mid-invocation, or was killed for a forged DONE
OVERLOAD = "overload"  # 503: queue full or waited too long
REJECTED = "rejected"  # 4xx decided by the daemon (404, 400, 401, 413, 431 ...)


@dataclass
class Outcome:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    kind: str  # OK, ERROR, TIMEOUT ...: what the log line and the counters call it
    reason: str | None = None


def text_outcome(status: int, kind: str, reason: str, **headers: str) -> Outcome:
    """A daemon-made answer: one readable line, also used as the log reason."""
    body = (reason + "\n").encode()
    pairs = [("Content-Type", "text/plain; charset=utf-8")]
    pairs.extend((name.replace("_", "-"), value) for name, value in headers.items())
    return Outcome(status, pairs, body, kind, reason)


class Invocation:
    """A request from its arrival to its log line; ``end`` writes the line the first time."""

    __slots__ = ("stats", "id", "method", "path", "received", "client", "route", "logged",
                 "trace", "user_agent", "twilio", "phases")

    def __init__(self, stats: Stats, invocation_id: str, method: str, path: str,
                 received: float, client: str | None, route: str | None = None,
                 trace: Trace | None = None, user_agent: str | None = None) -> None:
        self.stats = stats
        self.id = invocation_id
        self.method = method
        self.path = path
        self.received = received  # time.perf_counter() at arrival (uvloop's clock is ms)
        self.client = client  # the client's address
        self.route = route  # the function's route; None: no function (404, an asset)
        self.logged = False
        # fnd's span of this request (W3C Trace Context): the caller's trace, or a new one.
        self.trace = trace or new_trace()
        self.user_agent = user_agent  # bounded by the front-end
        self.twilio: dict[str, str] | None = None  # Twilio's ids in the request, when any
        # A function call's (queued, started) perf_counter marks, for its span's events.
        self.phases: tuple[float, float] | None = None

    def trace_headers(self) -> TraceHeaders:
        """What the worker gets (INVOKE's ``trace``): fnd's span as the function's parent."""
        trace = self.trace
        return {"traceparent": trace.traceparent, "tracestate": trace.tracestate}

    def end(self, status: int, outcome: str, reason: str | None = None,
            queue_wait: float = 0.0, cpu: float | None = None, rss: int | None = None,
            worker_pid: int | None = None, response_bytes: int | None = None,
            ended: float | None = None) -> None:
        """Count the request and write its log line, unless that is already done.
        `ended`: its perf_counter() end, when the line is written later than that."""
        if self.logged:
            return
        self.logged = True
        trace = self.trace
        # Only what is present: the line of a plain request stays as short as before.
        fields: dict[str, str | int] = {"trace_id": trace.trace_id, "span_id": trace.span_id}
        if trace.parent_id is not None:
            fields["parent_span_id"] = trace.parent_id
        if response_bytes is not None:
            fields["response_bytes"] = response_bytes
        if self.user_agent is not None:
            fields["user_agent"] = self.user_agent
        if self.twilio is not None:
            fields.update(self.twilio)
        self.stats.record(
            invocation_id=self.id, method=self.method, path=self.path, function=self.route,
            status=status, outcome=outcome,
            duration=(ended or time.perf_counter()) - self.received,
            queue_wait=queue_wait, cpu=cpu, rss=rss, worker_pid=worker_pid, reason=reason,
            client=self.client, **fields,
        )
        spans = self.stats.spans
        if spans is not None:  # only with fnd[otel] and otlp_endpoint (daemon/ops/otel.py)
            spans.export(self, status, outcome, queue_wait, cpu, worker_pid, ended)

    def answer(self, outcome: Outcome) -> None:
        """The line of an answer the daemon decided itself."""
        self.end(outcome.status, outcome.kind, outcome.reason,
                 response_bytes=len(outcome.body))


@dataclass(eq=False)
class Call:
    invocation: Invocation  # its log line: see complete()
    id: str
    function: FunctionRef
    event: dict[str, Any]
    context: dict[str, Any]
    timeout: float
    result: asyncio.Future[Outcome]
    queued: float = 0.0  # time.perf_counter() when the pool was asked for a worker
    started: float = 0.0  # time.perf_counter() when a worker took it
    worker_pid: int | None = None
    cpu: float | None = None
    rss: int | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    # The client's connection: a queued call whose client hung up is dropped, not run.
    transport: asyncio.BaseTransport | None = field(default=None, repr=False)
    isolated: bool = False  # isolation = "invocation": a fresh worker, killed after DONE
    returned: bool = False  # dev mode: the handler returned without calling callback

    def resolve(self, outcome: Outcome) -> bool:
        """Set the outcome once; later attempts (a late result after a kill) are ignored."""
        if self.result.done():  # also when cancelled: the request handler is gone
            return False
        self.result.set_result(outcome)
        if not self.started:  # no worker took it (503, 499): nothing more is to come
            self.complete()
        return True

    def complete(self, ended: float | None = None) -> None:
        """The call is over, its worker (if any) done with it: write its log line, once.

        A call whose request handler is gone (cancelled, never answered) has no line.
        `ended`: when it was over (perf_counter()), if the line is written after that.
        """
        result = self.result
        if self.invocation.logged or not result.done() or result.cancelled():
            return
        outcome = result.result()
        waited = (self.started or time.perf_counter()) - self.queued if self.queued else 0.0
        self.invocation.phases = (self.queued, self.started)
        # Positional: this runs for every call.
        self.invocation.end(outcome.status, outcome.kind, outcome.reason,
                            waited if waited > 0.0 else 0.0, self.cpu, self.rss, self.worker_pid,
                            len(outcome.body), ended)
