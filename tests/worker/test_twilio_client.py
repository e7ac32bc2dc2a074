"""worker/twilio_client.py: the REST client passes the invocation's trace on (W3C)."""

from __future__ import annotations

import re

import pytest

from fnd.worker.context import Context
from tests.twilio_fake import twilio_fake

pytestmark = pytest.mark.unit

ACCOUNT_SID = "AC" + "0" * 32
TOKEN = "0123456789abcdef0123456789abcdef"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def _context(trace: dict[str, str], base_url: str) -> Context:
    return Context({"ACCOUNT_SID": ACCOUNT_SID, "AUTH_TOKEN": TOKEN}, base_url,
                   {"traceparent": trace["traceparent"], "tracestate": trace["tracestate"]})


def test_each_request_carries_a_child_traceparent_and_the_tracestate() -> None:
    with twilio_fake() as fake:
        context = _context({"traceparent": f"00-{TRACE_ID}-{SPAN}-01",
                            "tracestate": "congo=t61rcWkgMzE"}, fake.url)
        assert context.traceparent == f"00-{TRACE_ID}-{SPAN}-01"
        assert context.tracestate == "congo=t61rcWkgMzE"
        assert "traceparent" not in context  # not a variable: dict(context) is unchanged
        client = context.getTwilioClient()
        for _ in range(2):
            client.messages.create(to="+15557654321", from_="+15551234567", body="hi")
        sent = [r.headers for r in fake.requests]
    spans = []
    for headers in sent:
        match = re.fullmatch(rf"00-{TRACE_ID}-(?P<span>[0-9a-f]{{16}})-01", headers["traceparent"])
        assert match is not None, headers["traceparent"]
        spans.append(match["span"])
        assert headers["tracestate"] == "congo=t61rcWkgMzE"
        assert headers["x-twilio-host"] == "api.twilio.com"
    assert len(set(spans)) == 2 and SPAN not in spans  # a new span per request


def test_no_tracestate_header_when_there_is_none() -> None:
    with twilio_fake() as fake:
        client = _context({"traceparent": f"00-{TRACE_ID}-{SPAN}-00", "tracestate": ""},
                          fake.url).getTwilioClient()
        client.messages.create(to="+15557654321", from_="+15551234567", body="hi")
        [request] = fake.requests
    assert request.headers["traceparent"].startswith(f"00-{TRACE_ID}-")
    assert request.headers["traceparent"].endswith("-00")
    assert "tracestate" not in request.headers
