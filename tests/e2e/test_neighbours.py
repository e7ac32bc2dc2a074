"""Two projects on one host, each under its own `fnd serve`, cannot reach each other.

Both daemons run with default settings, side by side, as they would under fnd@a and fnd@b:
each holds a range of worker uids no other fnd uses, and a function of project A, whatever it
tries, cannot read project B's files, signal or trace B's workers, or talk to B's daemon. A
daemon told to use uids another one holds refuses to start, naming the holder.

State on the host that every daemon sees (scratch folders and mounts, cgroups, uid claims,
sockets) is judged by its namespace: a daemon in another pid namespace never takes this one's,
and folders another user planted are neither used nor mounted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from fnd.ctl.client import request as control_request
from fnd.daemon.sandbox.fd_mounts import mounts
from fnd.daemon.sandbox.scratch_root import roots_of
from tests.fndserver import FIXTURES, FndServer, running, until, world_readable_copy

pytestmark = pytest.mark.root_only  # worker uids

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def _project_a(**kwargs: Any) -> Iterator[FndServer]:
    """project_a without its requirements.txt: nothing here calls /e164, and a project whose
    requirements are not installed is not served (`fnd deps`: test_two_projects.py)."""
    copy = world_readable_copy(FIXTURES / "project_a")
    (copy / "requirements.txt").unlink()
    try:
        with running(copy, **kwargs) as a:
            yield a
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[FndServer, FndServer]]:
    with _project_a() as a, running("project_b") as b:
        # As docs/operating.md installs it: the variables are the daemon's (root) alone.
        (b.project / ".env").chmod(0o600)
        yield a, b


def _uids(server: FndServer) -> range:
    held = server.status()["uids"]
    return range(held["first"], held["last"] + 1)


def _real_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def _worker_pids(server: FndServer) -> list[int]:
    return [w["pid"] for w in server.status()["per_worker"]
            if w["state"] in ("idle", "busy") and w.get("pid")]


def _reach(a: FndServer, **attempts: str) -> dict[str, Any]:
    response = a.get("/reach", params=attempts)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_two_default_daemons_hold_disjoint_worker_uid_ranges(
        pair: tuple[FndServer, FndServer]) -> None:
    a, b = pair
    # The kernel's view first: no uid runs workers of both daemons.
    running_a = {_real_uid(pid) for pid in _worker_pids(a)}
    running_b = {_real_uid(pid) for pid in _worker_pids(b)}
    assert running_a and running_b and not running_a & running_b, (running_a, running_b)
    range_a, range_b = _uids(a), _uids(b)
    assert not set(range_a) & set(range_b), (range_a, range_b)
    assert a.status()["uids"]["automatic"] and b.status()["uids"]["automatic"]
    # Every worker runs as a uid of its own daemon's range.
    for server, own in ((a, range_a), (b, range_b)):
        pids = _worker_pids(server)
        assert pids
        assert all(_real_uid(pid) in own for pid in pids), [_real_uid(p) for p in pids]
    assert a.get("/who").json()["uid"] in range_a
    assert b.get("/who").json()["uid"] in range_b
    table = subprocess.run([sys.executable, "-P", "-m", "fnd.cli", "status", "--control",
                            a.control], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert f"uids       {range_a[0]}-{range_a[-1]} (automatic)" in table.stdout, table.stdout


def test_a_function_cannot_open_the_other_projects_files(
        pair: tuple[FndServer, FndServer]) -> None:
    a, b = pair
    own = _reach(a, open=str(a.project / "functions" / "who.py"))
    assert own == {"open": "ok"}  # the attempt itself works: its own code is readable
    assert _reach(a, open=str(b.project / "functions" / "who.py")) == {"open": "PermissionError"}
    assert _reach(a, open=str(b.project / ".env")) == {"open": "PermissionError"}


def test_a_worker_cannot_signal_or_trace_the_other_projects_workers(
        pair: tuple[FndServer, FndServer]) -> None:
    a, b = pair
    target = _worker_pids(b)[0]
    result = _reach(a, kill=str(target), ptrace=str(target))
    assert result == {"kill": "PermissionError", "ptrace": "PermissionError"}
    assert target in _worker_pids(b)  # untouched, still serving
    assert b.get("/who").status_code == 200


def test_a_worker_cannot_connect_to_the_other_daemons_control_socket(
        pair: tuple[FndServer, FndServer]) -> None:
    a, b = pair
    assert _reach(a, connect=b.control) == {"connect": "PermissionError"}
    assert b.status()["ok"] is True  # root still can


def test_a_fork_bomb_in_one_project_leaves_the_other_able_to_start_processes() -> None:
    # One worker each, so both serve from slot 0: with a shared uid base they would be the
    # same uid, and A's children would count against B's RLIMIT_NPROC.
    one = {"FND_WORKERS_MIN": "1", "FND_WORKERS_MAX": "1"}
    with _project_a(env=one) as a, running("project_b", env=one) as b:
        answer = a.get("/crowd", params={"url": b.url + "/spawn"}, timeout=60)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["refused"] == "EAGAIN" and result["children"] > 0, result
        assert result["other"] == "ok", result  # B started a process while A was full
        assert b.get("/who").status_code == 200


def test_a_configured_uid_base_overlapping_a_live_daemon_is_refused(
        pair: tuple[FndServer, FndServer]) -> None:
    a, _ = pair
    held = a.status()["uids"]
    project = world_readable_copy(FIXTURES / "project_b")
    third = FndServer(project, [], env={"FND_UID_BASE": str(held["first"] + 1)})
    try:
        refused = third.wait_for(lambda line: line.get("event") in ("ready", "cannot start"), 60)
        assert refused["event"] == "cannot start"
        reason = refused["reason"]
        assert f"fnd pid {a.status()['pid']}" in reason and str(a.project) in reason, reason
        assert f"{held['first']}-{held['last']}" in reason, reason
        assert third.process.wait(30) == 1
    finally:
        third.stop()
        shutil.rmtree(project.parent, ignore_errors=True)


def test_a_reload_cannot_grow_into_another_daemons_range() -> None:
    # C holds four uids (workers_max 2), D the next four. A reload raising C's workers_max
    # would reach into D's uids: refused, naming D, and C's old code keeps serving.
    first = 300000 + os.getpid() % 1000 * 8  # a span nothing else on this host uses
    small = {"fnd.toml": "workers_min = 1\nworkers_max = 2\n"}
    with running("project_b", env={"FND_UID_BASE": str(first)}, files=small) as c, \
            running("project_b", env={"FND_UID_BASE": str(first + 4)}, files=small) as d:
        assert c.status()["uids"] == {"first": first, "last": first + 3, "automatic": False}
        (c.project / "fnd.toml").write_text("workers_min = 1\nworkers_max = 4\n")
        answer = asyncio.run(control_request(c.control, {"cmd": "reload"}))
        assert answer["ok"] is False
        assert f"fnd pid {d.status()['pid']}" in answer["error"], answer
        assert c.get("/who").status_code == 200  # the old generation keeps serving
        assert c.status()["uids"]["last"] == first + 3


def test_a_range_is_free_again_once_its_daemon_is_gone() -> None:
    with running("project_b", env={"FND_WORKERS_MIN": "1"}) as first:
        taken = first.status()["uids"]
    until(lambda: not os.path.exists(f"/run/fnd/uids/{taken['first']}-{taken['last']}"))
    with running("project_b", env={"FND_UID_BASE": str(taken["first"]),
                                   "FND_WORKERS_MIN": "1"}) as second:
        assert second.status()["uids"]["first"] == taken["first"]


# --- host-wide state: each daemon judges only its own pid namespace --------------------------

NOBODY = 65534


def _in_new_pid_namespace(command: list[str]) -> list[str]:
    # --kill-child: should the test fail first, the SIGTERM that ends unshare reaches fnd.
    return ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM", *command]


def _writes_to_scratch_work(fnd: FndServer) -> None:
    """Every answer of a function that writes a file in its cwd (its scratch) is a 200."""
    for _ in range(4):
        answer = fnd.get("/leave_file")
        assert answer.status_code == 200, answer.text


def _stop_namespace_init(fnd: FndServer) -> None:
    """SIGTERM to the `fnd serve` that is PID 1 of the namespace (unshare forwards nothing);
    unshare then exits with its exit code."""
    [init] = psutil.Process(fnd.process.pid).children()
    init.send_signal(signal.SIGTERM)
    assert fnd.process.wait(30) == 0
    fnd.wait_for(lambda line: line.get("event") == "stopped")


def _reload(fnd: FndServer) -> None:
    answer = asyncio.run(control_request(fnd.control, {"cmd": "reload"}))
    assert answer["ok"] is True, answer


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_daemon_in_another_pid_namespace_leaves_this_ones_scratch_alone() -> None:
    with running("bounds") as first:  # workers_max 2: one worker, room for a reload
        _writes_to_scratch_work(first)
        # As fnd as PID 1 of a container, or the PID-1 tests, start one.
        with running("bounds", wrap=_in_new_pid_namespace) as second:
            assert second.get("/leave_file").status_code == 200
            # Uid claims are judged by their lock, not by a pid: the ranges stay apart.
            assert not set(_uids(first)) & set(_uids(second))
            _writes_to_scratch_work(first)
            _reload(first)
            _writes_to_scratch_work(first)
            assert first.status()["ok"] is True
            _stop_namespace_init(second)
        # Its clean-up at stop did not take the first one's scratch with it either.
        _writes_to_scratch_work(first)
        _reload(first)
        _writes_to_scratch_work(first)
        status = first.status()
        assert status["ok"] is True and not status["broken"], status


def _plant_as_nobody(parent: Path, names: list[str], target: Path) -> None:
    """As another user would: each name a folder whose slot-0 and slot-1 point at target."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            for name in names:
                with contextlib.suppress(FileExistsError):
                    (parent / name).mkdir()
                    for slot in ("slot-0", "slot-1"):
                        (parent / name / slot).symlink_to(target)
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0


def test_decoy_scratch_folders_of_another_user_neither_stop_fnd_nor_get_mounted_on() -> None:
    parent = Path(tempfile.gettempdir())
    target = Path(tempfile.mkdtemp(prefix="fnd-test-target-"))
    (target / "kept").write_text("unchanged")
    os.chown(target, NOBODY, NOBODY)
    # The old root's name carried only the daemon's pid: plant it for the next pids, one of
    # which the daemon below gets; and the new pattern for a pid that runs nothing.
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    top = int(Path("/proc/sys/kernel/pid_max").read_text())
    names = [f"fnd-{(last + i) % top}-scratch" for i in range(1, 3000)]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    names.append(f"fnd-scratch-{os.stat('/proc/self/ns/pid').st_ino}-{dead}-decoy")
    _plant_as_nobody(parent, names, target)
    try:
        with running("bounds", "--workers-min", "2") as fnd:
            _writes_to_scratch_work(fnd)
            assert str(target) not in [m.point for m in mounts()]
            assert os.listdir(target) == ["kept"]
            assert (parent / names[-1] / "slot-0").is_symlink()  # not swept: not fnd's
            [root] = roots_of(fnd.process.pid)  # its own, fresh, root's alone
            assert fnd.get("/leave_file").json()["cwd"].startswith(root + "/slot-")
            assert os.lstat(root).st_uid == 0
    finally:
        for point in [m.point for m in mounts()]:
            if point == str(target):  # what an fnd that fell for the decoy mounted there
                subprocess.run(["umount", "-l", point], check=False)
        for name in names:
            shutil.rmtree(parent / name, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
