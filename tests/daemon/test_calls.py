"""daemon/calls.py: a request's log line is written once, when the request is over."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from fnd.daemon import calls
from fnd.daemon.calls import Call, Invocation, text_outcome
from fnd.daemon.stats import Stats
from fnd.protocol.trace import Trace
from tests.daemon.log_lines import LogLines

pytestmark = pytest.mark.unit


def _call(loop: asyncio.AbstractEventLoop, stats: Stats) -> Call:
    invocation = Invocation(stats, "id-1", "POST", "/sms", time.perf_counter(), "10.0.0.1",
                            route="/sms")
    return Call(invocation=invocation, id="id-1", function={"name": "/sms", "file": "/f.py"},
                event={}, context={}, timeout=5.0, result=loop.create_future())


def _run(test: Any) -> None:
    async def main() -> None:
        log = LogLines()
        test(asyncio.get_running_loop(), Stats(log=log), log)  # type: ignore[arg-type]
    asyncio.run(main())


def test_a_call_no_worker_took_is_written_when_answered() -> None:
    def test(loop: asyncio.AbstractEventLoop, stats: Stats, log: LogLines) -> None:
        call = _call(loop, stats)
        call.queued = time.perf_counter() - 0.25  # it waited in the queue
        call.resolve(text_outcome(503, calls.OVERLOAD, "no worker became free within 0.25 s"))
        [line] = log.lines
        assert line["status"] == 503 and line["outcome"] == calls.OVERLOAD
        assert line["function"] == "/sms" and line["worker_pid"] is None
        assert line["queue_wait_ms"] >= 250 and line["client"] == "10.0.0.1"
        call.complete()  # a late completion changes nothing
        assert len(log.lines) == 1
        assert stats.outcomes[calls.OVERLOAD] == 1

    _run(test)


def test_a_worker_call_is_written_when_complete_not_when_answered() -> None:
    def test(loop: asyncio.AbstractEventLoop, stats: Stats, log: LogLines) -> None:
        call = _call(loop, stats)
        call.queued = time.perf_counter()
        call.started = call.queued + 0.001
        call.worker_pid = 77
        call.resolve(calls.Outcome(200, [], b"ok", calls.OK))
        assert log.lines == []  # the worker has not said DONE: CPU and memory unknown
        call.cpu, call.rss = 0.004, 5000
        call.complete()
        call.complete()
        [line] = log.lines
        assert (line["worker_pid"], line["cpu_ms"], line["peak_rss"]) == (77, 4.0, 5000)
        assert line["queue_wait_ms"] == 1.0 and line["invocation_id"] == "id-1"

    _run(test)


def test_a_call_whose_handler_is_gone_has_no_line() -> None:
    def test(loop: asyncio.AbstractEventLoop, stats: Stats, log: LogLines) -> None:
        call = _call(loop, stats)
        call.started = time.perf_counter()
        call.result.cancel()
        assert not call.resolve(calls.Outcome(200, [], b"", calls.OK))
        call.complete()
        assert log.lines == [] and stats.invocations == 0

    _run(test)


def test_an_answer_the_front_end_decides_is_written_once() -> None:
    def test(loop: asyncio.AbstractEventLoop, stats: Stats, log: LogLines) -> None:
        invocation = Invocation(stats, "id-2", "GET", "/nope", time.perf_counter(), None)
        invocation.answer(text_outcome(404, calls.REJECTED, "no function or asset at /nope"))
        invocation.answer(text_outcome(500, calls.ERROR, "internal error: KeyError"))
        [line] = log.lines
        assert (line["status"], line["function"], line["reason"]) == (
            404, None, "no function or asset at /nope")

    _run(test)


def test_the_line_has_trace_size_user_agent_and_twilio_ids_only_when_present() -> None:
    async def main() -> None:
        log = LogLines()
        stats = Stats(log=log, project="shop")  # type: ignore[arg-type]
        trace = Trace("4bf92f3577b34da6a3ce929d0e0e4736", "1111111111111111", "01",
                      "00f067aa0ba902b7", "congo=t61rcWkgMzE")
        traced = Invocation(stats, "id-3", "POST", "/sms", time.perf_counter(), None,
                            trace=trace, user_agent="TwilioProxy/1.1")
        traced.twilio = {"MessageSid": "SM" + "1" * 32}
        traced.answer(text_outcome(400, calls.REJECTED, "bad"))
        plain = Invocation(stats, "id-4", "GET", "/nope", time.perf_counter(), None)
        plain.answer(text_outcome(404, calls.REJECTED, "no function or asset at /nope"))
        first, second = log.lines
        assert first["trace_id"] == trace.trace_id and first["span_id"] == "1111111111111111"
        assert first["parent_span_id"] == "00f067aa0ba902b7"
        assert first["response_bytes"] == len(b"bad\n") and first["project"] == "shop"
        assert first["user_agent"] == "TwilioProxy/1.1"
        assert first["MessageSid"] == "SM" + "1" * 32
        assert traced.trace_headers() == {
            "traceparent": f"00-{trace.trace_id}-1111111111111111-01",
            "tracestate": "congo=t61rcWkgMzE"}
        # A request without a traceparent gets a new trace; no absent field is on its line.
        assert len(second["trace_id"]) == 32 and second["trace_id"] != trace.trace_id
        assert not {"parent_span_id", "user_agent", "MessageSid"} & set(second)
    asyncio.run(main())
