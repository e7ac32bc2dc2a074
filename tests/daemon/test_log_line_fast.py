"""The invocation line's fast path (daemon/logs.py): the same bytes as structlog's own path."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from fnd.daemon import logs
from fnd.daemon.logs import JsonLine, configure_logging, get_logger, line_writer
from fnd.daemon.stats import Stats
from tests.daemon.log_lines import LogLines

pytestmark = pytest.mark.unit  # no processes, no network

FIELDS: dict[str, Any] = {
    "invocation_id": "ab12-3f", "method": "GET", "path": "/caf\u00e9", "function": "/hello",
    "status": 200, "outcome": "ok", "duration_ms": 0.312, "queue_wait_ms": 0.0, "cpu_ms": None,
    "peak_rss": 123, "reason": 'a "quoted"\nline\x00', "client": "127.0.0.1",
    "trace_id": "0af7651916cd43dd8448eb211c80319c", "numbers": [1.5, float("inf"), {"k": ()}],
    "other": Path("/x"),  # not JSON: rendered with structlog's fallback (repr)
}


def test_json_line_renders_what_structlog_renders() -> None:
    event = {"project": "p", **FIELDS, "event": "invocation", "level": "info"}
    assert JsonLine()(None, "info", dict(event)) == \
        structlog.processors.JSONRenderer()(None, "info", dict(event))


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    # configure_logging is process-wide: later tests must not log through its sink.
    yield
    logs._sink.flush()
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


def _lines(capfd: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    logs._sink.flush()
    return [json.loads(line) for line in capfd.readouterr().err.splitlines()]


def test_the_fast_line_is_the_line_structlog_writes(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    assert logs._direct is not None  # the fast path is the one taken
    assert structlog.get_config()["processors"] is logs._direct.processors
    log = get_logger("fnd.invocation")
    line_writer(log, "info", "invocation", {"project": "shop"})(dict(FIELDS))
    log.bind(project="shop").info("invocation", **FIELDS)
    fast, plain = _lines(capfd)
    assert list(fast) == list(plain)  # the same fields, in the same order
    assert fast.pop("timestamp") and plain.pop("timestamp")
    assert fast == plain and fast["level"] == "info" and fast["event"] == "invocation"


def test_the_fast_line_keeps_the_configured_level(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", level=logging.WARNING)
    log = get_logger("fnd.invocation")
    line_writer(log, "info", "invocation", {})({"status": 200})
    line_writer(log, "warning", "invocation", {})({"status": 504})
    assert [line["status"] for line in _lines(capfd)] == [504]


def test_without_configure_logging_or_after_a_reset_the_line_goes_through_structlog(
    capfd: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json")
    structlog.reset_defaults()  # what a test does after it; the fast path must step aside
    captured: list[Any] = []
    structlog.configure(processors=[lambda _l, _m, event: captured.append(event) or ""])
    line_writer(get_logger("fnd.invocation"), "info", "invocation", {"project": "p"})({"a": 1})
    assert captured == [{"project": "p", "a": 1, "event": "invocation"}]
    assert _lines(capfd) == []


def test_a_stand_in_logger_gets_the_plain_call() -> None:
    log = LogLines()
    stats = Stats(log=log, project="shop")  # type: ignore[arg-type]
    stats.record(invocation_id="i", method="GET", path="/x", status=200, outcome="ok",
                 duration=0.0123456, cpu=0.0000004)
    (line,) = log.lines
    assert line["project"] == "shop" and line["event"] == "invocation"
    assert line["duration_ms"] == 12.346 and line["cpu_ms"] == 0.0
