"""protocol/trace.py: W3C Trace Context parsing and the spans fnd makes."""

from __future__ import annotations

import re

import pytest

from fnd.protocol import trace
from fnd.protocol.trace import accept, check_tracestate, child, parse_traceparent

pytestmark = pytest.mark.unit

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT}-01"
SHAPE = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]")


def test_a_valid_traceparent_is_parsed() -> None:
    assert parse_traceparent(VALID) == (TRACE_ID, PARENT, "01")
    assert parse_traceparent(f" {VALID}\t") == (TRACE_ID, PARENT, "01")  # OWS around it


@pytest.mark.parametrize("value", [
    "", "garbage", VALID + "-extra",  # version 00 has exactly four fields
    f"ff-{TRACE_ID}-{PARENT}-01",  # version ff is invalid
    f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero ids
    f"00-{TRACE_ID.upper()}-{PARENT}-01",  # only lowercase hex
    f"00-{TRACE_ID[:-1]}-{PARENT}-01", f"00-{TRACE_ID}-{PARENT}-1",
    f"00_{TRACE_ID}_{PARENT}_01",
])
def test_invalid_traceparents_are_refused(value: str) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_by_its_first_fields() -> None:
    assert parse_traceparent(f"01-{TRACE_ID}-{PARENT}-01-what-comes-later") == (
        TRACE_ID, PARENT, "01")


def test_accept_makes_fnd_a_child_span_of_the_caller() -> None:
    span = accept([VALID], ["congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"])
    assert span.trace_id == TRACE_ID and span.parent_id == PARENT and span.flags == "01"
    assert span.span_id != PARENT and re.fullmatch(r"[0-9a-f]{16}", span.span_id)
    assert span.tracestate == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"  # fields joined
    assert span.traceparent == f"00-{TRACE_ID}-{span.span_id}-01"
    # Unknown flags are not passed on under version 00; sampled stays as it was.
    assert accept([f"00-{TRACE_ID}-{PARENT}-ff"], []).flags == "01"
    assert accept([f"00-{TRACE_ID}-{PARENT}-00"], []).flags == "00"


@pytest.mark.parametrize("headers", [[], ["garbage"], [VALID, VALID]])
def test_accept_starts_a_new_trace_without_one_valid_traceparent(headers: list[str]) -> None:
    span = accept(headers, ["congo=t61rcWkgMzE"])
    assert SHAPE.fullmatch(span.traceparent) and span.trace_id != TRACE_ID
    assert span.parent_id is None and span.tracestate == ""


def test_new_ids_differ_and_are_never_zero() -> None:
    assert len({trace.new_trace_id() for _ in range(100)}) == 100
    assert len({trace.new_span_id() for _ in range(100)}) == 100


@pytest.mark.parametrize(("value", "kept"), [
    ("congo=t61rcWkgMzE", "congo=t61rcWkgMzE"),
    ("a=1 , b@vendor=2,,", "a=1,b@vendor=2"),  # spaces and empty members dropped
    ("Upper=1", ""), ("a=", ""), ("a=b=c", ""), ("nokey", ""),
    (",".join(f"k{i}=v" for i in range(33)), ""),  # more than 32 members
    ("a=" + "x" * 600, ""),  # over the 512-character bound
])
def test_tracestate_is_kept_only_when_well_formed(value: str, kept: str) -> None:
    assert check_tracestate(value) == kept


def test_child_keeps_the_trace_and_flags_with_a_new_span() -> None:
    parent = f"00-{TRACE_ID}-{PARENT}-01"
    made = child(parent)
    assert SHAPE.fullmatch(made)
    assert made.startswith(f"00-{TRACE_ID}-") and made.endswith("-01")
    assert made[36:52] != PARENT


def test_a_new_trace_has_valid_distinct_ids_from_one_draw() -> None:
    made = [trace.new_trace() for _ in range(200)]
    for span in made:
        assert SHAPE.fullmatch(span.traceparent) and span.flags == "01"
        assert span.parent_id is None and span.tracestate == ""
        assert span.trace_id != "0" * 32 and span.span_id != "0" * 16
    assert len({span.trace_id for span in made}) == len({span.span_id for span in made}) == 200
    assert all(span.trace_id[:16] != span.span_id for span in made)  # not one id twice
