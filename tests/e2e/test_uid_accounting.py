"""The strict sandbox without a writable cgroup: slots accounted by uid, through `fnd serve`.

Each daemon runs in a mount namespace of its own where /sys/fs/cgroup is an empty read-only
tmpfs, as in a Kubernetes pod or a podman container without cgroup binds: no cgroup can be
written, so the daemon must account each slot by its uid (docs/sandbox.md#uid-accounting).
The functions (fixtures/uid_accounting) leave behind what only the uid still ties to them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from fnd.daemon.sandbox.uid_accounting import scan
from tests.e2e.hostile import SLACK, alive, exit_line, gone
from tests.fndserver import FndServer, running, until

pytestmark = pytest.mark.root_only  # worker uids, mounts, a mount namespace

FIXTURE = "uid_accounting"
TIMEOUT = 2.0  # fnd.toml's timeout
PIDS_MAX = 64  # the default RLIMIT_NPROC per slot uid
_NO_CGROUP = 'mount -t tmpfs -o ro,size=4k fnd-no-cgroup /sys/fs/cgroup && exec "$@"'


def without_cgroups(command: list[str]) -> list[str]:
    """`command` in a private mount namespace whose /sys/fs/cgroup is empty and read-only."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _NO_CGROUP, "sh",
            *command]


@pytest.fixture
def fnd() -> Iterator[FndServer]:
    assert os.geteuid() == 0, "workers run as other uids: run as root"
    with running(FIXTURE, wrap=without_cgroups) as server:
        yield server


def _line(fnd: FndServer, prefix: str, timeout: float = 10.0) -> str:
    found = fnd.wait_for(lambda line: line.get("event") == "function output"
                         and str(line.get("line", "")).startswith(prefix), timeout)
    return str(found["line"])[len(prefix):]


def _hello(fnd: FndServer) -> dict[str, int]:
    response = fnd.get("/hello")
    assert response.status_code == 200, (response.status_code, response.text)
    answer: dict[str, int] = response.json()
    return answer


def test_strict_starts_with_uid_accounting_and_status_is_healthy(fnd: FndServer) -> None:
    status = fnd.status()
    assert status["sandbox"] == "strict" and status["accounting"] == "uid", status
    assert status["sandbox_warnings"] == []
    layers = status["per_worker"][0]["layers"]
    assert layers["cgroup"] == "n/a: uid accounting", layers
    assert "nproc=64" in layers["rlimits"] and "data=" in layers["rlimits"], layers
    first = status["uids"]["first"]
    assert first <= _hello(fnd)["uid"] <= status["uids"]["last"]
    table = subprocess.run([sys.executable, "-P", "-m", "fnd.cli", "status", "--control",
                            fnd.control], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stdout + table.stderr
    assert "accounting=uid" in table.stdout and "health     ok" in table.stdout, table.stdout


def test_setsid_child_of_a_timed_out_call_is_killed(fnd: FndServer) -> None:
    started = time.monotonic()
    response = fnd.get("/setsid_child")
    assert response.status_code == 504, (response.status_code, response.text)
    grandchild = int(_line(fnd, "grandchild="))
    # Re-parented and in a session of its own: only its uid still ties it to the slot.
    until(lambda: not alive(grandchild), TIMEOUT + 1 + SLACK - (time.monotonic() - started),
          f"the setsid grandchild {grandchild} killed within the limit + 1 s")
    _hello(fnd)


@pytest.mark.parametrize(("function", "answer", "found_by"), [
    ("thread_left", "left a thread", "left threads or processes running"),  # the worker says
    ("hidden_thread", "hidden", "1 thread(s) or process(es) left in its slot"),  # /proc says
])
def test_thread_left_after_done_gets_the_worker_killed_as_unclean(
        fnd: FndServer, function: str, answer: str, found_by: str) -> None:
    response = fnd.get("/" + function)
    assert response.status_code == 200 and response.text == answer, response.text
    pid = fnd.invocation(response.headers["X-Fnd-Invocation-Id"])["worker_pid"]
    exited = exit_line(fnd, pid, 5 + SLACK)
    assert exited["cause"] == "unclean", exited
    assert str(exited.get("reason")).startswith(found_by), exited
    gone(pid, 5 + SLACK)
    assert _hello(fnd)["pid"] != pid


def test_fork_bomb_is_bounded_by_the_slot_uid(fnd: FndServer) -> None:
    uids = fnd.status()["uids"]
    stop = threading.Event()
    served: list[int] = []
    peak = [0]

    def watch() -> None:  # the most processes any one slot uid ever held
        while not stop.is_set():
            per_uid: dict[int, int] = {}
            for task in scan(uids["first"], uids["last"] - uids["first"] + 1):
                per_uid[task.uid] = per_uid.get(task.uid, 0) + 1
            peak[0] = max([peak[0], *per_uid.values()])

    def others() -> None:  # the daemon keeps serving other calls meanwhile
        while not stop.is_set():
            served.append(requests.get(fnd.url + "/hello", timeout=30).status_code)

    threads = [threading.Thread(target=watch), threading.Thread(target=others)]
    for thread in threads:
        thread.start()
    try:
        bomb = fnd.get("/fork_bomb")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert bomb.status_code == 200, (bomb.status_code, bomb.text)
    result = bomb.json()
    assert result["errno"] == "EAGAIN" and 0 < len(result["children"]) < PIDS_MAX, result
    assert peak[0] <= PIDS_MAX, peak
    assert served and set(served) == {200}, served
    bomber = fnd.invocation(bomb.headers["X-Fnd-Invocation-Id"])["worker_pid"]
    until(lambda: not any(alive(pid) for pid in [bomber, *result["children"]]),
          5 + SLACK, "the bomber and every child it forked killed")
    _hello(fnd)


def test_memory_hog_gets_a_memory_error_and_the_next_call_is_served(fnd: FndServer) -> None:
    response = fnd.get("/memory_hog")
    assert response.status_code == 500, (response.status_code, response.text)
    assert "MemoryError" in response.text, response.text
    pid = fnd.invocation(response.headers["X-Fnd-Invocation-Id"])["worker_pid"]
    _hello(fnd)
    until(lambda: pid not in [w["pid"] for w in fnd.status()["per_worker"]], 5 + SLACK,
          "the worker that hit its memory limit replaced")
    _hello(fnd)


def test_a_writable_cgroup_is_used_as_before_unless_uid_is_asked_for() -> None:
    with running(FIXTURE) as fnd:  # this host's cgroup v1 hierarchies are writable
        status = fnd.status()
        assert status["accounting"] == "cgroup v1", status
        assert status["per_worker"][0]["layers"]["cgroup"].startswith("v1 memory+pids"), status
    with running(FIXTURE, env={"FND_ACCOUNTING": "uid"}) as fnd:
        status = fnd.status()
        assert status["accounting"] == "uid", status
        assert status["per_worker"][0]["layers"]["cgroup"] == "n/a: uid accounting", status


def test_accounting_cgroup_refuses_to_start_strict_without_one() -> None:
    with running(FIXTURE, wrap=without_cgroups, env={"FND_ACCOUNTING": "cgroup"},
                 ready=False) as server:
        assert server.process.wait(60) != 0
        refused = " ".join(str(line.get("reason") or line.get("text") or "")
                           for line in server.lines)
        assert "no usable cgroup hierarchy" in refused, refused


def test_a_child_that_kills_its_own_uid_in_a_loop_is_killed_too(fnd: FndServer) -> None:
    response = fnd.get("/kill_loop")
    assert response.status_code in (502, 504), (response.status_code, response.text)
    looper = int(_line(fnd, "looper="))
    gone(looper, 5 + SLACK, f"the kill(-1) looper {looper} killed")
    until(lambda: not fnd.status()["per_worker"] or _hello(fnd) is not None, 5 + SLACK)
    _hello(fnd)
