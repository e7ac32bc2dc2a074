"""What the invocation line says about a request beyond its origin (docs/operating.md#6-logs):
its user agent and the Twilio ids people search logs by. Every value is bounded."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

USER_AGENT_MAX = 200  # characters of User-Agent on the line
ID_MAX = 64  # characters of one Twilio id (a Sid is 34)
HEADERS_MAX = 4  # X-Twilio-Webhook-* headers on the line at most
# Twilio's own ids, by their webhook parameter names, as on the line.
EVENT_IDS = ("MessageSid", "CallSid", "SmsSid", "AccountSid")
_IDEMPOTENCY = b"i-twilio-idempotency-token"
_WEBHOOK = b"x-twilio-webhook-"


def user_agent(value: str | None) -> str | None:
    return None if value is None else value[:USER_AGENT_MAX]


def twilio_ids(event: Mapping[str, Any],
               raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str] | None:
    """The Twilio ids of a request, by name (``MessageSid``... from the event;
    ``I-Twilio-Idempotency-Token`` and ``X-Twilio-Webhook-*`` headers under their names);
    None when there is none."""
    found: dict[str, str] | None = None
    for name in EVENT_IDS:
        value = event.get(name)
        if isinstance(value, str) and value:
            if found is None:
                found = {}
            found[name] = value[:ID_MAX]
    webhooks = 0
    for raw_name, raw_value in raw_headers:
        lowered = raw_name.lower()
        if lowered == _IDEMPOTENCY or (lowered.startswith(_WEBHOOK) and webhooks < HEADERS_MAX):
            if lowered != _IDEMPOTENCY:
                webhooks += 1
            if found is None:
                found = {}
            name = raw_name.decode("latin-1")[:ID_MAX]
            found["-".join(part.capitalize() for part in name.split("-"))] = (
                raw_value.decode("latin-1")[:ID_MAX])
    return found
