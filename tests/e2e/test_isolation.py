"""`isolation = "invocation"`: every call in a fresh worker, killed once it is done.

Project-wide in fnd.toml, or per function in `[functions."/path"]`. A function that forges
DONE and then reads the command pipe to capture the next INVOKE must never see one: its
worker is killed after its own invocation.
"""

from __future__ import annotations

import os

import pytest

from tests.e2e.hostile import (
    FIXTURE,
    SLACK,
    alive,
    gone,
    new_tag,
    ok,
    worker_pid,
)
from tests.fndserver import FIXTURES, FndServer, running, until

BASE_TOML = (FIXTURES / FIXTURE / "fnd.toml").read_text()
PROJECT_WIDE = BASE_TOML + 'isolation = "invocation"\n'
PER_FUNCTION = BASE_TOML + (
    '\n[functions."/capture"]\nisolation = "invocation"\n'
    '\n[functions."/whoami"]\nisolation = "invocation"\n'
)


def _no_capture(fnd: FndServer, tag: str) -> None:
    """The capture function ran, its worker is gone, and no later call reached it."""
    response = fnd.get("/capture", params={"tag": tag})
    pid = worker_pid(fnd, response, tag)
    assert response.status_code in (200, 500, 502), (response.status_code, response.text)
    gone(pid, 5 + SLACK, f"the capturing worker {pid} killed after its DONE")
    for _ in range(5):
        answer = ok(fnd)
        assert answer["pid"] != pid
    assert not [line for line in fnd.lines if line.get("event") == "function output"
                and str(line.get("line", "")).startswith("captured ")]


@pytest.mark.root_only
def test_project_wide_isolation_gives_every_call_a_fresh_worker() -> None:
    assert os.geteuid() == 0
    with running(FIXTURE, files={"fnd.toml": PROJECT_WIDE}) as fnd:
        pids = [ok(fnd)["pid"] for _ in range(5)]
        assert len(set(pids)) == 5, pids
        until(lambda: not any(alive(pid) for pid in pids), 5 + SLACK,
              "every single-use worker gone")


def test_project_wide_isolation_stops_a_forged_done_from_capturing_the_next_call() -> None:
    with running(FIXTURE, files={"fnd.toml": PROJECT_WIDE}) as fnd:
        _no_capture(fnd, new_tag("capture"))


def test_per_function_isolation_applies_to_that_function_only() -> None:
    with running(FIXTURE, files={"fnd.toml": PER_FUNCTION}) as fnd:
        isolated = [fnd.get("/whoami").json()["pid"] for _ in range(3)]
        assert len(set(isolated)) == 3, isolated
        until(lambda: not any(alive(pid) for pid in isolated), 5 + SLACK,
              "the isolated function's workers gone")
        shared = [ok(fnd)["pid"] for _ in range(4)]
        assert len(set(shared)) < len(shared), f"a normal function's worker is reused: {shared}"
        _no_capture(fnd, new_tag("capture"))
