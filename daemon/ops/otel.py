"""Optional OpenTelemetry export: one span per invocation (docs/operating.md#tracing).

Only with the ``fnd[otel]`` extra installed and ``otlp_endpoint`` set: ``spans(config)``
is the one place that imports the SDK, so without them nothing is imported and an
invocation costs one ``is None`` test. The span is fnd's span of the request as the log
line has it (the same ``trace_id`` and ``span_id``, the caller's span as its parent): the
SDK is handed those ids rather than making its own. Queue wait and run are its events.
Spans go out in batches from the SDK's own thread (BatchSpanProcessor), never from the
event loop.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from fnd.daemon.config import Config, ConfigError

if TYPE_CHECKING:
    from fnd.daemon.calls import Invocation

INSTALL_HINT = "pip install 'fnd[otel]'"
_EXPORT_TIMEOUT = 5.0  # seconds for one OTLP request: a dead collector never holds a stop long


class Spans(Protocol):
    """Where an invocation's span goes (``Invocation.end``)."""

    def export(self, invocation: Invocation, status: int, outcome: str, queue_wait: float,
               cpu: float | None, worker_pid: int | None, ended: float | None = None
               ) -> None: ...

    def close(self) -> None: ...


def spans(config: Config) -> Spans | None:
    """The exporter ``config`` asks for: None without ``otlp_endpoint``; ConfigError when it
    is set but the extra is missing (fnd refuses to start rather than export nothing)."""
    if not config.otlp_endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(f"otlp_endpoint is set but OpenTelemetry is not installed ({exc}); "
                          f"install it with {INSTALL_HINT}, or unset otlp_endpoint") from None
    exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, timeout=_EXPORT_TIMEOUT)
    return OtelSpans(BatchSpanProcessor(exporter), config.instance)


class OtelSpans:
    """Spans made with the OpenTelemetry SDK, handed to ``processor`` (a test passes a
    SimpleSpanProcessor over the SDK's InMemorySpanExporter)."""

    def __init__(self, processor: Any, instance: str) -> None:
        from opentelemetry import trace as api
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.id_generator import IdGenerator

        class Given(IdGenerator):  # type: ignore[misc]
            """The ids fnd already chose for the span about to start (one thread: the loop)."""
            trace_id = 0
            span_id = 0

            def generate_span_id(self) -> int:
                return self.span_id

            def generate_trace_id(self) -> int:
                return self.trace_id

        self._api = api
        self._ids = Given()
        resource = Resource.create({"service.name": "fnd", "service.instance.id": instance})
        self._provider = TracerProvider(resource=resource, id_generator=self._ids,
                                        shutdown_on_exit=False)
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("fnd")
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
        from opentelemetry.trace.span import TraceState
        self._remote = (NonRecordingSpan, SpanContext, TraceFlags, TraceState)
        self._server = SpanKind.SERVER

    def export(self, invocation: Invocation, status: int, outcome: str, queue_wait: float,
               cpu: float | None, worker_pid: int | None, ended: float | None = None
               ) -> None:
        """`ended`: the perf_counter() mark the span ends at (None: now)."""
        api = self._api
        trace = invocation.trace
        NonRecordingSpan, SpanContext, TraceFlags, TraceState = self._remote
        parent = None
        if trace.parent_id is not None:
            state = TraceState.from_header([trace.tracestate]) if trace.tracestate else None
            parent = api.set_span_in_context(NonRecordingSpan(SpanContext(
                int(trace.trace_id, 16), int(trace.parent_id, 16), is_remote=True,
                trace_flags=TraceFlags(int(trace.flags, 16)), trace_state=state)))
        self._ids.trace_id = int(trace.trace_id, 16)
        self._ids.span_id = int(trace.span_id, 16)
        # perf_counter marks -> wall-clock ns: the span ends now.
        now_ns, now = time.time_ns(), time.perf_counter()

        def wall(mark: float) -> int:
            return now_ns - int((now - mark) * 1e9)

        route = invocation.route
        attributes: dict[str, str | int | float] = {
            "http.request.method": invocation.method, "url.path": invocation.path,
            "http.response.status_code": status, "fnd.outcome": outcome,
            "fnd.invocation_id": invocation.id,
        }
        if route is not None:
            attributes["http.route"] = route
        span = self._tracer.start_span(
            f"{invocation.method} {route}" if route else invocation.method, context=parent,
            kind=self._server, attributes=attributes, start_time=wall(invocation.received))
        phases = invocation.phases
        if phases is not None:  # a function call: when it was queued, and when a worker took it
            queued, started = phases
            if queued:
                span.add_event("queue wait", {"fnd.queue_wait_ms": round(queue_wait * 1000, 3)},
                               timestamp=wall(queued))
            if started:
                run: dict[str, str | int | float] = {}
                if worker_pid is not None:
                    run["fnd.worker_pid"] = worker_pid
                if cpu is not None:
                    run["fnd.cpu_ms"] = round(cpu * 1000, 3)
                span.add_event("run", run, timestamp=wall(started))
        if status >= 500:
            span.set_status(api.Status(api.StatusCode.ERROR, outcome))
        span.end(end_time=now_ns if ended is None else wall(ended))

    def close(self) -> None:
        """Send what is pending and stop the SDK's thread."""
        self._provider.shutdown()
