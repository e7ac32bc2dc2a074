"""daemon/ops/otel.py: one OpenTelemetry span per invocation, with the log line's ids."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from fnd.daemon import calls
from fnd.daemon.calls import Call, Invocation, text_outcome
from fnd.daemon.config import Config, ConfigError
from fnd.daemon.ops import otel
from fnd.daemon.stats import Stats
from fnd.protocol.trace import Trace
from tests.daemon.log_lines import LogLines

pytestmark = pytest.mark.unit

sdk_export = pytest.importorskip("opentelemetry.sdk.trace.export")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
SPAN = "53995c3f42cd8ad8"


def _stats() -> tuple[Stats, object]:
    exporter = in_memory.InMemorySpanExporter()
    spans = otel.OtelSpans(sdk_export.SimpleSpanProcessor(exporter), "shop")
    return Stats(log=LogLines(), project="shop", spans=spans), exporter  # type: ignore[arg-type]


def test_a_function_call_is_one_span_with_the_lines_ids_and_its_phases() -> None:
    async def main() -> None:
        stats, exporter = _stats()
        log = stats.log
        trace = Trace(TRACE_ID, SPAN, "01", PARENT, "congo=t61rcWkgMzE")
        invocation = Invocation(stats, "id-1", "POST", "/sms", time.perf_counter(), None,
                                route="/sms", trace=trace)
        loop = asyncio.get_running_loop()
        call = Call(invocation=invocation, id="id-1", function={"name": "/sms", "file": "/f"},
                    event={}, context={}, timeout=5.0, result=loop.create_future())
        call.queued = time.perf_counter()
        call.started = call.queued + 0.002
        call.worker_pid, call.cpu, call.rss = 77, 0.004, 1000
        call.resolve(calls.Outcome(200, [], b"ok", calls.OK))
        call.complete()
        [span] = exporter.get_finished_spans()  # type: ignore[attr-defined]
        [line] = log.lines  # type: ignore[attr-defined]
        context = span.get_span_context()
        assert f"{context.trace_id:032x}" == TRACE_ID == line["trace_id"]
        assert f"{context.span_id:016x}" == SPAN == line["span_id"]
        assert f"{span.parent.span_id:016x}" == PARENT and span.parent.is_remote
        assert span.name == "POST /sms" and span.kind.name == "SERVER"
        assert span.attributes["http.response.status_code"] == 200
        assert span.attributes["fnd.invocation_id"] == "id-1"
        assert span.attributes["http.route"] == "/sms"
        assert [event.name for event in span.events] == ["queue wait", "run"]
        run = span.events[1]
        assert run.attributes["fnd.worker_pid"] == 77 and run.attributes["fnd.cpu_ms"] == 4.0
        assert span.events[1].timestamp - span.events[0].timestamp == pytest.approx(2e6, rel=0.1)
        assert span.start_time <= span.events[0].timestamp <= span.end_time
        assert span.resource.attributes["service.name"] == "fnd"
        assert span.resource.attributes["service.instance.id"] == "shop"
        assert span.status.is_ok
    asyncio.run(main())


def test_a_line_written_after_the_call_ended_keeps_its_end_in_the_line_and_the_span(
) -> None:
    async def main() -> None:
        stats, exporter = _stats()
        received = time.perf_counter()
        invocation = Invocation(stats, "id-2", "GET", "/f", received, None, route="/f")
        call = Call(invocation=invocation, id="id-2", function={"name": "/f", "file": "/f"},
                    event={}, context={}, timeout=5.0,
                    result=asyncio.get_running_loop().create_future())
        call.queued = call.started = received
        call.resolve(calls.Outcome(200, [], b"ok", calls.OK))
        call.complete(ended=received + 0.003)  # the pool writes the line after its DONE
        [span] = exporter.get_finished_spans()  # type: ignore[attr-defined]
        [line] = stats.log.lines  # type: ignore[attr-defined]
        assert line["duration_ms"] == 3.0
        assert span.end_time - span.start_time == pytest.approx(3e6, abs=2e3)
    asyncio.run(main())


def test_a_request_without_traceparent_is_a_root_span_and_5xx_is_an_error() -> None:
    stats, exporter = _stats()
    invocation = Invocation(stats, "id-2", "GET", "/nope", time.perf_counter(), None)
    invocation.answer(text_outcome(503, calls.OVERLOAD, "busy"))
    [span] = exporter.get_finished_spans()  # type: ignore[attr-defined]
    assert span.parent is None and span.name == "GET" and span.events == ()
    assert f"{span.get_span_context().trace_id:032x}" == invocation.trace.trace_id
    assert not span.status.is_ok


def test_no_endpoint_no_exporter_and_a_missing_extra_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert otel.spans(Config(project_dir=Path("/srv/shop"))) is None
    config = Config(project_dir=Path("/srv/shop"), otlp_endpoint="http://127.0.0.1:4318/v1/traces")
    made = otel.spans(config)
    assert isinstance(made, otel.OtelSpans)
    made.close()
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter",
                        None)
    with pytest.raises(ConfigError, match=r"fnd\[otel\]"):
        otel.spans(config)
