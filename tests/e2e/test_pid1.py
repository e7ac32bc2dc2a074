"""`fnd serve` as PID 1 of its own pid namespace, as in a container started without --init.

The namespace is made with util-linux `unshare --pid --fork --mount-proc` (root only); the
process it forks is PID 1 inside and is reached from here by its outer pid.
"""

from __future__ import annotations

import os
import shutil
import signal

import psutil
import pytest

from tests.fndserver import FndServer, running, until

pytestmark = [
    pytest.mark.root_only,  # a new pid namespace
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare"),
]


def _in_new_pid_namespace(command: list[str]) -> list[str]:
    return ["unshare", "--pid", "--fork", "--mount-proc", *command]


def _pid1(fnd: FndServer) -> psutil.Process:
    """The `fnd serve` that is PID 1 inside the namespace (unshare's only child)."""
    children: list[psutil.Process] = []

    def forked() -> bool:
        children[:] = psutil.Process(fnd.process.pid).children()
        return len(children) == 1
    until(forked, what="unshare's child")
    return children[0]


def _namespace_zombies(init: psutil.Process) -> list[int]:
    zombies = []
    for child in init.children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return zombies


def _zygote(init: psutil.Process) -> psutil.Process:
    for child in init.children(recursive=True):
        try:
            if "fnd.worker.zygote" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError("no zygote in the namespace")


def test_serve_as_pid1_answers_reaps_orphans_reloads_and_stops_cleanly() -> None:
    with running("supervision", "--workers-min", "2", wrap=_in_new_pid_namespace) as fnd:
        init = _pid1(fnd)
        assert fnd.get("/hello").text == "hello"

        # The zygote killed: its workers die with it and, orphaned, go to PID 1, which must
        # reap them; the daemon starts a new zygote and answers again.
        workers = _zygote(init).children()
        assert workers, "the zygote has no workers"
        _zygote(init).kill()
        fnd.wait_for(lambda line: line.get("event") == "zygote restarted")
        assert fnd.get("/hello").status_code == 200
        until(lambda: not _namespace_zombies(init), what="orphaned workers reaped by PID 1")
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)

        os.kill(init.pid, signal.SIGHUP)  # forwarded to the daemon: a reload
        fnd.wait_for(lambda line: line.get("event") == "reloaded")
        assert fnd.get("/hello").status_code == 200

        os.kill(init.pid, signal.SIGTERM)
        assert fnd.process.wait(30) == 0  # unshare exits with its child's exit code
        fnd.wait_for(lambda line: line.get("event") == "stopped")
