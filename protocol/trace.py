"""W3C Trace Context (https://www.w3.org/TR/trace-context/): ``traceparent`` and ``tracestate``.

Shared by both sides: the daemon reads the request's headers (``accept``) and makes fnd's
span of the invocation; the worker's Twilio client sends a child of it (``child``). Ids are
``random.getrandbits`` (as the OpenTelemetry SDK makes them): unique, not secret, ~0.1 µs;
``random`` reseeds itself in a forked child, so workers forked by the zygote never share ids.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import NamedTuple

_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
# tracestate: list-members "key=value" separated by commas (optional spaces), at most 32.
_KEY = r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(rf"{_KEY}={_VALUE}")
TRACESTATE_MAX = 512  # characters fnd passes on; a longer one is dropped, as the spec allows
_MEMBERS_MAX = 32


class Trace(NamedTuple):
    """fnd's span of one invocation: the trace it belongs to and its own span id.

    A NamedTuple (immutable, made without a frozen dataclass's per-field setattr): one is
    made for every request."""

    trace_id: str  # 32 lowercase hex
    span_id: str  # fnd's span: the parent of what the function sends
    flags: str  # 2 hex: "01" sampled
    parent_id: str | None = None  # the caller's span, from its traceparent; None: a new trace
    tracestate: str = ""  # the caller's, checked; "" when none

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` of fnd's span: what the function passes on."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def new_span_id() -> str:
    return (random.getrandbits(64) or 1).to_bytes(8, "big").hex()


def new_trace_id() -> str:
    return (random.getrandbits(128) or 1).to_bytes(16, "big").hex()


def new_trace() -> Trace:
    """The root span of a new trace: both ids from one draw of random bits."""
    ids = random.getrandbits(192).to_bytes(24, "big").hex()
    trace_id, span_id = ids[:32], ids[32:]
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:  # invalid ids; 2^-64 at most
        return Trace(new_trace_id(), new_span_id(), "01")
    return Trace(trace_id, span_id, "01")


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """(trace id, parent id, flags) of a valid ``traceparent``; None when it is not one."""
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version = match["version"]
    if version == "ff" or (version == "00" and match["rest"] is not None):
        return None
    trace, parent = match["trace"], match["parent"]
    if trace == _ZERO_TRACE or parent == _ZERO_SPAN:
        return None
    return trace, parent, match["flags"]


def check_tracestate(value: str) -> str:
    """``value`` when it is a well-formed tracestate within bounds, else ""."""
    if not value or len(value) > TRACESTATE_MAX:
        return ""
    members = [member.strip(" \t") for member in value.split(",")]
    members = [member for member in members if member]
    if len(members) > _MEMBERS_MAX or not all(_MEMBER.fullmatch(m) for m in members):
        return ""
    return ",".join(members)


def accept(traceparent: Sequence[str], tracestate: Sequence[str]) -> Trace:
    """fnd's span for a request with these header values (each header's every field):
    a child of a valid ``traceparent``, else the root of a new trace."""
    parsed = parse_traceparent(traceparent[0]) if len(traceparent) == 1 else None
    if parsed is None:  # absent, invalid or repeated: a new trace, and no tracestate
        return new_trace()  # fnd records it: sampled
    trace_id, parent_id, flags = parsed
    # Only the sampled bit is defined for version 00; pass on no unknown flag.
    flags = "01" if int(flags, 16) & 1 else "00"
    state = check_tracestate(",".join(tracestate)) if tracestate else ""
    return Trace(trace_id, new_span_id(), flags, parent_id, state)


def child(traceparent: str) -> str:
    """A ``traceparent`` for an outgoing request under ``traceparent``: same trace, new span."""
    return f"{traceparent[:36]}{new_span_id()}{traceparent[52:]}"
