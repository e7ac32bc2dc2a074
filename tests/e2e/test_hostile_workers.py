"""The daemon verifies its workers and never trusts them, through the real `fnd serve`.

A function runs inside its worker and can write anything on the worker's result pipe, close
it, or lie about being done. Each function in fixtures/untrusted does one of those; each test
asserts what the client gets, that the worker (and all it started) is killed and why, and
that the next normal call is served by an honest worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from fnd.daemon.config import load_config
from tests.e2e.hostile import (
    FIXTURE,
    SLACK,
    TIMEOUT,
    WORKERS_MAX,
    alive,
    child_pid,
    exit_line,
    gone,
    new_tag,
    no_busy_worker,
    ok,
    worker_pid,
)
from tests.fndserver import FIXTURES, FndServer, running, until

pytestmark = pytest.mark.root_only  # worker uids, cgroups, mounts

INVALID = "invalid frame from the worker"


@pytest.fixture
def fnd() -> Iterator[FndServer]:
    """A daemon per test: a hostile worker a lax daemon lets live never meets the next test."""
    assert os.geteuid() == 0, "workers run as other uids in their own cgroups: run as root"
    with running(FIXTURE) as server:
        yield server


def _call(fnd: FndServer, path: str, **params: Any) -> requests.Response:
    try:
        return fnd.get(path, params=params)
    except requests.RequestException as exc:  # e.g. a 20,000-header answer reached the client
        raise AssertionError(f"{path} {params}: no valid HTTP answer: {exc!r}") from None


def _killed_for_protocol(fnd: FndServer, pid: int) -> None:
    exited = exit_line(fnd, pid, 5 + SLACK)
    assert exited["cause"] == "protocol", exited
    gone(pid, 5 + SLACK)


# -- 1. every frame is validated: while the call is unanswered -------------------------------
# kind -> a word the one-line reason should contain (None: the wording may vary).
BAD_RESULTS: dict[str, str | None] = {
    "status_0": "status",
    "status_negative": "status",
    "status_1000": "status",
    "status_101": "status",
    "status_inf": "status",
    "status_string": "status",
    "status_bool": "status",
    "status_float": "status",
    "body_5mib": "body",
    "body_text": "body",
    "headers_20000": "header",
    "header_7mib": None,  # over the header byte limit or over the frame limit: either is right
    "header_value_x01": "header",
    "header_value_x7f": "header",
    "header_value_newline": "header",
    "header_name_space": "header",
    "header_value_bytes": "header",
    "header_not_a_pair": "header",
    "headers_not_a_list": "header",
    "wrong_id": None,
    "unknown_type": None,
}


@pytest.mark.parametrize("kind", list(BAD_RESULTS))
def test_invalid_result_is_a_500_and_the_worker_is_killed(fnd: FndServer, kind: str) -> None:
    tag = new_tag(kind)
    response = _call(fnd, "/bad_result", kind=kind, tag=tag)
    pid = worker_pid(fnd, response, tag)
    assert response.status_code == 500, (response.status_code, response.text[:200])
    assert response.headers["Content-Type"].startswith("text/plain")
    assert INVALID in response.text, response.text[:200]
    word = BAD_RESULTS[kind]
    reason = response.text.split(INVALID, 1)[1]
    assert reason.strip(" :\n"), f"no reason given: {response.text!r}"
    if word is not None:
        assert word in reason.lower(), response.text[:200]
    assert "X-Big" not in response.headers and "X-Ctl" not in response.headers
    _killed_for_protocol(fnd, pid)
    assert ok(fnd)["pid"] != pid


# -- 1. ... and after the answer: the client keeps it, the worker still goes -----------------
BAD_AFTER = ["done_cpu_nan", "done_cpu_inf", "done_cpu_negative", "done_rss_negative",
             "done_cpu_string", "second_result", "unknown_type"]


@pytest.mark.parametrize("kind", BAD_AFTER)
def test_invalid_frame_after_the_answer_kills_the_worker(fnd: FndServer, kind: str) -> None:
    tag = new_tag(kind)
    response = _call(fnd, "/bad_after", kind=kind, tag=tag)
    pid = worker_pid(fnd, response, tag)
    assert response.status_code == 200 and response.text == "answered", response.text[:200]
    _killed_for_protocol(fnd, pid)
    assert ok(fnd)["pid"] != pid


# -- 2. a result pipe closed behind the daemon's back ----------------------------------------
@pytest.mark.parametrize("function", ["close_sleep", "close_spin", "close_thread",
                                      "close_child", "close_daemonized"])
def test_closed_result_pipe_is_a_502_and_the_slot_is_emptied(fnd: FndServer,
                                                             function: str) -> None:
    tag = new_tag(function)
    response = _call(fnd, "/" + function, tag=tag)
    pid = worker_pid(fnd, response, tag)
    forks = function in ("close_child", "close_daemonized")
    processes = [pid, child_pid(fnd, tag)] if forks else [pid]
    assert response.status_code == 502, (response.status_code, response.text[:200])
    until(lambda: not any(alive(p) for p in processes), TIMEOUT + 3 + SLACK,
          f"{function}: worker {pid} and all it started gone")
    exited = exit_line(fnd, pid, SLACK)
    assert exited["cause"] != "timeout", exited
    assert ok(fnd)["pid"] != pid


def test_six_closed_pipes_leave_slots_in_range_and_no_busy_worker() -> None:
    with running(FIXTURE) as fnd:
        attackers = []
        for _ in range(6):
            tag = new_tag("close-six")
            response = _call(fnd, "/close_sleep", tag=tag)
            assert response.status_code == 502, (response.status_code, response.text)
            attackers.append(worker_pid(fnd, response, tag))
        until(lambda: not any(alive(p) for p in attackers), TIMEOUT + 3 + SLACK,
              "every worker whose pipe was closed is gone")
        until(lambda: no_busy_worker(fnd), SLACK, "no worker busy")
        slots = [w["slot"] for w in fnd.status()["per_worker"]]
        assert all(slot < 2 * WORKERS_MAX for slot in slots), slots
        assert ok(fnd)["pid"] not in attackers


# -- 3. a forged RESULT + DONE, then the CPU is kept busy -------------------------------------
def test_forged_done_does_not_return_a_busy_worker_to_the_pool(fnd: FndServer) -> None:
    tag = new_tag("forge")
    response = _call(fnd, "/forge", tag=tag)
    pid = worker_pid(fnd, response, tag)
    assert response.status_code in (200, 500, 502, 504), response.status_code
    exited = exit_line(fnd, pid, TIMEOUT + 3 + SLACK)
    assert exited["cause"] in {"timeout", "idle_cpu", "unclean"}, exited
    gone(pid, 5 + SLACK)
    for _ in range(20):
        answer = ok(fnd)
        assert answer["pid"] != pid


# -- 3. a DONE before the call's RESULT ---------------------------------------------------------
def test_done_before_the_result_kills_that_worker_and_spares_the_next_call(
        fnd: FndServer) -> None:
    tag = new_tag("done-first")
    response = _call(fnd, "/done_first", tag=tag)
    pid = worker_pid(fnd, response, tag)
    assert response.status_code == 502, (response.status_code, response.text[:200])
    assert "DONE before the call's RESULT" in response.text, response.text[:200]
    assert "late answer" not in response.text
    # Another function, at once: never sent to the liar, never hit by its late RESULT.
    assert ok(fnd)["pid"] != pid
    exited = exit_line(fnd, pid, 5 + SLACK)
    assert exited["cause"] == "protocol" and "DONE before" in exited["reason"], exited
    gone(pid, 5 + SLACK)


# -- 4. the worker's own leftover check is patched to lie -------------------------------------
def test_hidden_thread_is_found_by_the_daemons_own_check(fnd: FndServer) -> None:
    tag = new_tag("hide")
    response = _call(fnd, "/hide_thread", tag=tag)
    pid = worker_pid(fnd, response, tag)
    assert response.status_code == 200 and response.text == "hidden"
    exited = exit_line(fnd, pid, 5 + SLACK)
    assert exited["cause"] == "unclean", exited
    gone(pid, 5 + SLACK)
    assert ok(fnd)["pid"] != pid


# -- 6. recycling is on by default, and by age ------------------------------------------------
def test_recycling_is_on_by_default() -> None:
    config = load_config(FIXTURES / FIXTURE, environ={})
    assert config.max_requests > 0, "workers are never recycled by request count"
    assert config.max_requests_jitter > 0, "recycling by count has no jitter"
    assert getattr(config, "max_worker_age", None) == 3600


def test_worker_older_than_max_worker_age_is_replaced() -> None:
    toml = (FIXTURES / FIXTURE / "fnd.toml").read_text() + "max_worker_age = 1\n"
    with running(FIXTURE, files={"fnd.toml": toml}) as fnd:
        first = {w["pid"] for w in fnd.status()["per_worker"]}
        exited = fnd.wait_for(lambda line: line.get("event") == "worker exited"
                              and line.get("pid") in first, 10 + SLACK)
        assert exited["cause"] == "max_age", exited
        until(lambda: not first & {w["pid"] for w in fnd.status()["per_worker"]},
              10 + SLACK, "every first worker replaced")
        for _ in range(5):
            assert ok(fnd)["pid"] not in first
