"""daemon/http/request_facts.py: the user agent and Twilio ids on the invocation line."""

from __future__ import annotations

import pytest

from fnd.daemon.http.request_facts import HEADERS_MAX, ID_MAX, twilio_ids, user_agent

pytestmark = pytest.mark.unit


def test_user_agent_is_bounded() -> None:
    assert user_agent(None) is None
    assert user_agent("curl/8.0") == "curl/8.0"
    assert user_agent("x" * 1000) == "x" * 200


def test_twilio_ids_from_the_event_and_headers_only_when_present() -> None:
    assert twilio_ids({"Body": "hi", "request": {}}, [(b"Host", b"x")]) is None
    event = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "2" * 32, "MessageSid": ["a", "b"],
             "SmsSid": ""}
    headers = [(b"i-twilio-idempotency-token", b"t" * 200),
               (b"X-TWILIO-WEBHOOK-ENABLED", b"true"), (b"X-Twilio-Signature", b"sig")]
    assert twilio_ids(event, headers) == {
        "CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "2" * 32,  # a list or "" is no id
        "I-Twilio-Idempotency-Token": "t" * ID_MAX, "X-Twilio-Webhook-Enabled": "true",
    }


def test_at_most_a_few_webhook_headers() -> None:
    headers = [(f"X-Twilio-Webhook-H{i}".encode(), b"v") for i in range(10)]
    found = twilio_ids({}, headers)
    assert found is not None and len(found) == HEADERS_MAX
