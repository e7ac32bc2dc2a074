"""The worker's main loop: READY first, exit 0 at EOF, non-zero on a malformed frame."""

from __future__ import annotations

import os
from typing import Any

import pytest

from fnd.protocol.messages import FunctionCheck, Preflight
from tests.worker.harness import Worker, fixture_functions


def test_ready_frame_first(worker: Worker) -> None:
    assert worker.ready == {"t": "ready", "pid": worker.pid, "layers": {"test": "harness"}}


def test_exit_0_at_eof(worker: Worker) -> None:
    assert worker.call("respond_value", {"value": "x"}).body == b"x"
    os.close(worker.cmd_w)
    assert worker.wait_exit() == 0


def test_exit_2_on_a_truncated_frame(worker: Worker) -> None:
    os.write(worker.cmd_w, b"\x00\x00\x00\x10abc")
    os.close(worker.cmd_w)
    assert worker.wait_exit() == 2


@pytest.mark.parametrize(
    "message",
    [
        {"t": "spawn"},
        {"t": "invoke", "id": 7, "function": {"name": "/x", "file": "/x.py"}},
        {"t": "invoke", "id": "a", "function": "x", "event": {}, "context": {}, "timeout": 1},
        {
            "t": "invoke",
            "id": "a",
            "function": {"name": "/x", "file": "/x.py"},
            "event": [],
            "context": {},
            "timeout": 1,
        },
        {
            "t": "invoke",
            "id": "a",
            "function": {"name": "/x", "file": "/x.py"},
            "event": {},
            "context": {},
            "timeout": "soon",
        },
        {
            "t": "invoke",
            "id": "a",
            "function": {"name": "/x", "file": "/x.py"},
            "event": {},
            "context": {},
            "timeout": 1,
            "trace": {"traceparent": 5},
        },
    ],
)
def test_exit_2_on_a_malformed_message(worker: Worker, message: dict[str, Any]) -> None:
    worker.send(message)
    log = worker.read()
    assert log["t"] == "log" and "protocol error" in log["line"]
    assert worker.wait_exit() == 2


def test_many_invocations_in_one_worker(worker: Worker) -> None:
    for n in range(50):
        assert worker.call("respond_value", {"value": n}).body == str(n).encode()


def test_a_preflight_loads_each_function_check(worker: Worker) -> None:
    functions = fixture_functions()
    checks: list[FunctionCheck] = [
        {"route": "/respond_value", "file": functions["/respond_value"], "needs_handler": True},
        {"route": "/gone", "file": "/nonexistent/gone.py", "needs_handler": False},
    ]
    preflight: Preflight = {"t": "preflight", "functions": checks, "context": {}}
    worker.send(dict(preflight))
    reply = worker.read()
    assert reply["t"] == "preflight_result"
    assert [route for route, _ in reply["problems"]] == ["/gone"]


@pytest.mark.parametrize("check", [["/x", "/x.py", True], {"route": "/x", "file": "/x.py"}])
def test_exit_2_on_a_malformed_function_check(worker: Worker, check: Any) -> None:
    worker.send({"t": "preflight", "functions": [check], "context": {}})
    log = worker.read()
    assert log["t"] == "log" and "protocol error" in log["line"]
    assert worker.wait_exit() == 2
