"""W3C Trace Context end to end and the invocation line's request facts (issue #24):
docs/handlers.md#trace-context, docs/operating.md#6-logs."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.fndserver import FndServer, running, until
from tests.twilio_fake import TwilioFake, twilio_fake

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = re.compile(
    r"00-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})")
INVOCATION_HEADER = "X-Fnd-Invocation-Id"


@pytest.fixture(scope="module")
def fake() -> Iterator[TwilioFake]:
    with twilio_fake() as server:
        yield server


@pytest.fixture(scope="module")
def fnd(fake: TwilioFake) -> Iterator[FndServer]:
    with running("parity", "--workers-min", "1",
                 env={"FND_TWILIO_API_BASE_URL": fake.url,
                      "FND_INSTANCE_NAME": "shop"}) as server:
        yield server


def test_traceparent_reaches_the_line_the_function_and_the_twilio_client(
    fnd: FndServer, fake: TwilioFake
) -> None:
    response = fnd.get("/echo/trace?send=1", headers={
        "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "congo=t61rcWkgMzE"})
    assert response.status_code == 200, response.text
    body = response.json()
    line = fnd.invocation(response.headers[INVOCATION_HEADER])
    assert line["trace_id"] == TRACE_ID
    assert line["parent_span_id"] == PARENT_ID
    # The function's parent is fnd's span: same trace, fnd's own span id.
    assert body["traceparent"] == f"00-{TRACE_ID}-{line['span_id']}-01"
    assert body["tracestate"] == "congo=t61rcWkgMzE"
    assert line["span_id"] != PARENT_ID
    sent = [r for r in fake.requests if r.path.endswith("/Messages.json")][-1]
    outgoing = TRACEPARENT.fullmatch(sent.headers["traceparent"])
    assert outgoing is not None, sent.headers["traceparent"]
    assert outgoing["trace"] == TRACE_ID
    assert outgoing["span"] not in (PARENT_ID, line["span_id"])  # a new span: the REST call
    assert outgoing["flags"] == "01"
    assert sent.headers["tracestate"] == "congo=t61rcWkgMzE"


@pytest.mark.parametrize("headers", [
    {},
    {"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"},  # an all-zero trace id is invalid
    {"traceparent": f"00-{TRACE_ID.upper()}-{PARENT_ID}-01"},  # upper case is invalid
    {"traceparent": "garbage", "tracestate": "congo=t61rcWkgMzE"},
])
def test_without_a_valid_traceparent_a_fresh_trace_starts(
    fnd: FndServer, headers: dict[str, str]
) -> None:
    response = fnd.get("/echo/trace", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    line = fnd.invocation(response.headers[INVOCATION_HEADER])
    parsed = TRACEPARENT.fullmatch(body["traceparent"])
    assert parsed is not None
    assert parsed["trace"] == line["trace_id"] and parsed["span"] == line["span_id"]
    assert line["trace_id"] not in (TRACE_ID, "0" * 32, TRACE_ID.upper())
    assert "parent_span_id" not in line
    assert body["tracestate"] == ""  # a tracestate without its traceparent is dropped


def test_two_requests_without_traceparent_get_different_traces(fnd: FndServer) -> None:
    ids = {fnd.invocation(fnd.get("/echo/trace").headers[INVOCATION_HEADER])["trace_id"]
           for _ in range(2)}
    assert len(ids) == 2


def test_the_line_has_response_bytes_user_agent_project_and_twilio_ids(fnd: FndServer) -> None:
    message_sid, account_sid = "SM" + "1" * 32, "AC" + "2" * 32
    token = account_sid + "-" + "9" * 20
    response = fnd.request(
        "POST", "/echo/trace",
        data={"MessageSid": message_sid, "SmsSid": message_sid, "AccountSid": account_sid},
        headers={"User-Agent": "TwilioProxy/1.1 " + "x" * 500,
                 "I-Twilio-Idempotency-Token": token,
                 "X-Twilio-Webhook-Retry-Count": "2"})
    assert response.status_code == 200, response.text
    line = fnd.invocation(response.headers[INVOCATION_HEADER])
    assert line["response_bytes"] == len(response.content)
    assert line["user_agent"].startswith("TwilioProxy/1.1 x") and len(line["user_agent"]) == 200
    assert line["project"] == "shop"
    assert line["MessageSid"] == message_sid and line["SmsSid"] == message_sid
    assert line["AccountSid"] == account_sid
    assert "CallSid" not in line  # only what the request has
    assert line["I-Twilio-Idempotency-Token"] == token
    assert line["X-Twilio-Webhook-Retry-Count"] == "2"


def test_a_plain_request_has_no_twilio_fields_and_a_404_has_its_size(fnd: FndServer) -> None:
    response = fnd.get("/nowhere", headers={"User-Agent": "curl/8.0"})
    assert response.status_code == 404
    line = fnd.invocation(response.headers[INVOCATION_HEADER])
    assert line["response_bytes"] == len(response.content)
    assert line["user_agent"] == "curl/8.0" and line["project"] == "shop"
    assert not {"MessageSid", "CallSid", "SmsSid", "AccountSid"} & set(line)


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, list[bytes]]]:
    """An OTLP/HTTP traces endpoint on loopback that keeps each export's protobuf body."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_otlp_endpoint_exports_one_span_per_invocation() -> None:
    trace_service = pytest.importorskip(
        "opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    with otlp_receiver() as (endpoint, bodies), running(
            "parity", "--workers-min", "1",
            env={"FND_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}) as fnd:
        response = fnd.get("/echo/trace", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        assert response.status_code == 200, response.text
        line = fnd.invocation(response.headers[INVOCATION_HEADER])

        def spans() -> list[Any]:
            found = []
            for body in list(bodies):
                request = trace_service.ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        found.extend(scope_spans.spans)
            return [span for span in found if span.trace_id.hex() == TRACE_ID]

        until(lambda: bool(spans()), 30, "the span reached the OTLP receiver")
        [span] = spans()
        assert span.span_id.hex() == line["span_id"] and span.parent_span_id.hex() == PARENT_ID
        assert span.name == "GET /echo/trace"
        assert [event.name for event in span.events] == ["queue wait", "run"]


def test_the_daemon_does_not_import_opentelemetry_without_an_endpoint() -> None:
    code = ("import sys, fnd.daemon.server, fnd.daemon.http.app; "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
