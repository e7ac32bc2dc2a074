"""Helpers for the tests where a function attacks its own worker's protocol pipes.

The hostile functions (fixtures/untrusted) print "hostile <tag> pid=<pid>" before they
attack; the daemon logs that line as "function output", so a test learns which worker it is
fighting whatever the daemon answered.
"""

from __future__ import annotations

import itertools
from typing import Any

import psutil
import requests

from tests.fndserver import FndServer, Line, until

INVOCATION_HEADER = "X-Fnd-Invocation-Id"
FIXTURE = "untrusted"
TIMEOUT = 2.0  # fnd.toml's timeout
WORKERS_MAX = 4  # fnd.toml's workers_max
# The machine is shared by several test runs: every deadline gets this much scheduling room.
SLACK = 2.0
_tags = itertools.count()


def new_tag(prefix: str) -> str:
    return f"{prefix}-{next(_tags)}"


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def attacker_pid(fnd: FndServer, tag: str, timeout: float = 10.0) -> int:
    """The pid of the worker that ran the hostile call tagged `tag`, as the daemon saw it."""
    prefix = f"hostile {tag} pid="
    found = fnd.wait_for(lambda line: line.get("event") == "function output"
                         and str(line.get("line", "")).startswith(prefix), timeout)
    pid = found.get("worker_pid")
    assert isinstance(pid, int) and str(found["line"]) == f"{prefix}{pid}", found
    return pid


def worker_pid(fnd: FndServer, response: requests.Response, tag: str) -> int:
    """The worker that served `response`: from the daemon's invocation log line when the
    answer names its invocation, else from the function's announcement. (A LOG frame that
    shares a pipe read with garbage may be dropped with it, so the first is preferred.)"""
    invocation = response.headers.get(INVOCATION_HEADER)
    if invocation:
        pid = fnd.invocation(invocation, 10.0).get("worker_pid")
        if isinstance(pid, int):
            return pid
    return attacker_pid(fnd, tag)


def child_pid(fnd: FndServer, tag: str, timeout: float = 10.0) -> int:
    prefix = f"hostile {tag} child="
    found = fnd.wait_for(lambda line: line.get("event") == "function output"
                         and str(line.get("line", "")).startswith(prefix), timeout)
    return int(str(found["line"])[len(prefix):])


def exit_line(fnd: FndServer, pid: int, timeout: float) -> Line:
    """The daemon's "worker exited" line for `pid`, waiting up to `timeout` seconds."""
    return fnd.wait_for(lambda line: line.get("event") == "worker exited"
                        and line.get("pid") == pid, timeout)


def gone(pid: int, timeout: float, what: str = "") -> None:
    until(lambda: not alive(pid), timeout, what or f"process {pid} gone")


def ok(fnd: FndServer) -> dict[str, Any]:
    """A normal call to ok.py: 200 with the real body; returns {"body", "pid"}."""
    response = fnd.get("/ok")
    assert response.status_code == 200, f"ok.py: {response.status_code} {response.text}"
    assert response.text.startswith("{"), f"ok.py answered by someone else: {response.text!r}"
    answer: dict[str, Any] = response.json()
    assert answer["body"] == "real ok", answer
    return answer


def no_busy_worker(fnd: FndServer) -> bool:
    status = fnd.status()
    return status["workers"]["busy"] == 0 and not any(
        w["state"] == "busy" for w in status["per_worker"])
