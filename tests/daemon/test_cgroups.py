"""Per-slot cgroups: detection, limits, kill_slot, OOM classification, cleanup.

Runs as root (CI does) against the host's real hierarchy; every group is made under a
test-only name and removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from fnd.daemon.sandbox.cgroups import (
    CgroupError,
    Cgroups,
    _parse_mountinfo,
    _parse_proc_cgroup,
    detect,
)
from fnd.daemon.sandbox.slot_probe import SlotProbe, parse_cpu
from tests.cgroup_wait import wait_empty
from tests.processes import reap

MiB = 1024 * 1024
PR_SET_CHILD_SUBREAPER = 36

MOUNTINFO_V1 = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PROC_CGROUP_V1 = """\
8:pids:/
4:memory:/box/1
2:cpu,cpuacct:/
0::/
"""


@pytest.fixture
def cg() -> Iterator[Cgroups]:
    assert os.geteuid() == 0, "the cgroup tests must run as root (CI does)"
    groups = Cgroups.create(memory_bytes=64 * MiB, pids_max=16, name=f"fnd-test-{os.getpid()}")
    with _subreaper():
        yield groups
    for slot in list(groups._slots):
        groups.kill_slot(slot)
    assert groups.cleanup() == []


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    from fnd.worker.sandbox.libc import prctl

    prctl(PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield
    finally:
        prctl(PR_SET_CHILD_SUBREAPER, 0)


def _join(dirs: list[str]) -> None:
    for directory in dirs:
        with open(os.path.join(directory, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))



def _read_line(fd: int, timeout: float = 20.0) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 4096) if ready else b""


# --- detection -----------------------------------------------------------------------------


def test_parsers() -> None:
    mounts = _parse_mountinfo(MOUNTINFO_V1)
    assert [(m[0], m[2]) for m in mounts] == [
        ("/sys/fs/cgroup/cpu,cpuacct", "cgroup"),
        ("/sys/fs/cgroup/memory", "cgroup"),
        ("/sys/fs/cgroup/pids", "cgroup"),
        ("/sys/fs/cgroup/unified", "cgroup2"),
    ]
    assert "cpuacct" in mounts[0][3]
    assert _parse_proc_cgroup(PROC_CGROUP_V1) == {
        "pids": "/",
        "memory": "/box/1",
        "cpu": "/",
        "cpuacct": "/",
        "": "/",
    }


def test_detect_reports_what_is_missing(tmp_path: Path) -> None:
    mountinfo = os.path.join(str(tmp_path), "mountinfo")
    proc_cgroup = os.path.join(str(tmp_path), "cgroup")
    with open(mountinfo, "w") as f:
        f.write("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")
    with open(proc_cgroup, "w") as f:
        f.write("0::/\n")
    with pytest.raises(CgroupError, match="v1 memory/pids hierarchy missing"):
        detect(mountinfo, proc_cgroup)


@pytest.mark.root_only
def test_detect_on_this_host() -> None:
    assert os.geteuid() == 0
    layout = detect()
    if layout.version == "v1":
        assert {"memory", "pids"} <= set(layout.bases)
        assert list(layout.bases)[:2] == ["memory", "pids"]
    else:
        assert list(layout.bases) == ["unified"]
    for directory in layout.bases.values():
        assert os.path.isfile(os.path.join(directory, "cgroup.procs"))


# --- groups and limits -----------------------------------------------------------------------


@pytest.mark.root_only
def test_slot_groups_carry_the_limits(cg: Cgroups) -> None:
    dirs = cg.slot_dirs(3)
    assert all(d.endswith(f"/{cg.name}/slot-3") for d in dirs)
    assert cg.dir_templates() == [d.replace("slot-3", "slot-{slot}") for d in dirs]
    if cg.layout.version == "v1":
        memory = os.path.join(cg.layout.bases["memory"], cg.name, "slot-3")
        with open(os.path.join(memory, "memory.limit_in_bytes")) as f:
            assert int(f.read()) == 64 * MiB
        pids = os.path.join(cg.layout.bases["pids"], cg.name, "slot-3")
        with open(os.path.join(pids, "pids.max")) as f:
            assert f.read().strip() == "16"
    else:
        with open(os.path.join(dirs[0], "memory.max")) as f:
            assert int(f.read()) == 64 * MiB
    assert cg.describe().startswith(cg.layout.version)


@pytest.mark.root_only
def test_pids_max_stops_forks_even_for_root(cg: Cgroups) -> None:
    dirs = cg.slot_dirs(1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        result = b"?"
        try:
            _join(dirs)
            count = 0
            while count < 100:
                try:
                    child = os.fork()
                except BlockingIOError:
                    result = b"EAGAIN %d" % count
                    break
                if child == 0:
                    time.sleep(60)
                    os._exit(0)
                count += 1
            else:
                result = b"no limit"
        finally:
            os.write(w, result)
            os._exit(0)
    os.close(w)
    try:
        line = _read_line(r)
    finally:
        os.close(r)
        reap(pid)
        leftovers = cg.pids(1)
        cg.kill_slot(1)
        for child in leftovers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, 0)
    assert line == b"EAGAIN 15"  # 16 tasks: the child and 15 of its children
    assert wait_empty(cg, 1)


@pytest.mark.root_only
def test_kill_slot_kills_processes_that_left_the_process_group(cg: Cgroups) -> None:
    dirs = cg.slot_dirs(2)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            _join(dirs)
            grandchild = os.fork()
            if grandchild == 0:
                os.setsid()  # out of the worker's process group: killpg would miss it
                os.write(w, b"%d\n" % os.getpid())
                time.sleep(60)
                os._exit(0)
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    try:
        grandchild = int(_read_line(r))
    finally:
        os.close(r)
    assert sorted(cg.pids(2)) == sorted([pid, grandchild])
    assert os.getsid(grandchild) == grandchild
    assert cg.kill_slot(2) == 2
    assert os.WTERMSIG(reap(pid)) == signal.SIGKILL
    assert os.WTERMSIG(reap(grandchild)) == signal.SIGKILL  # orphan, reparented to us
    assert wait_empty(cg, 2)
    assert cg.pids(2) == []


@pytest.mark.root_only
def test_oom_kill_is_classified(cg: Cgroups) -> None:
    dirs = cg.slot_dirs(4)
    assert cg.oom_killed(4) is False
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            _join(dirs)
            hog = [b"x" * MiB for _ in range(256)]  # 256 MiB touched, limit is 64 MiB
            del hog
        finally:
            os._exit(0)
    status = reap(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert cg.oom_kills(4) >= 1
    assert cg.oom_killed(4) is True
    assert cg.oom_killed(4) is False  # counted once


@pytest.mark.root_only
def test_slot_probe_reads_the_cpu_counter(cg: Cgroups) -> None:
    dirs = cg.slot_dirs(5)
    probe = SlotProbe(cg)
    before = probe.cpu(5)
    if before is None:
        pytest.skip("no cpu accounting for this layout")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            _join(dirs)
            end = time.process_time() + 0.2
            while time.process_time() < end:
                pass
        finally:
            os._exit(0)
    reap(pid)
    after = probe.cpu(5)
    probe.close()
    assert after is not None and after - before >= 0.15


@pytest.mark.parametrize(("text", "seconds"), [
    (b"usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n", 2.5),  # v2 cpu.stat
    (b"1500000000\n", 1.5),  # v1 cpuacct.usage, in nanoseconds
    (b"usage_usec x\n", None),
    (b"user_usec 5\n", None),
    (b"", None),
])
def test_parse_cpu(text: bytes, seconds: float | None) -> None:
    assert parse_cpu(text) == seconds


def test_slot_probe_keeps_one_fd_per_counter(tmp_path: Path) -> None:
    class Files:
        def counter_path(self, slot: int, name: str) -> str | None:
            return None if slot == 9 else str(tmp_path / f"{slot}.{name}")

    (tmp_path / "1.cpu").write_bytes(b"usage_usec 1000\n")
    (tmp_path / "1.tasks").write_bytes(b"3\n")
    probe = SlotProbe(cast(Cgroups, Files()))
    assert probe.cpu(1) == 0.001 and probe.tasks(1) == 3
    (tmp_path / "1.cpu").write_bytes(b"usage_usec 4000\n")  # same inode: the open fd sees it
    assert probe.cpu(1) == 0.004
    assert probe.cpu(9) is None and probe.tasks(9) is None  # not accounted
    assert probe.cpu(2) is None  # no such file
    probe.close()


@pytest.mark.root_only
def test_cleanup_removes_every_group() -> None:
    assert os.geteuid() == 0
    cg = Cgroups.create(memory_bytes=32 * MiB, pids_max=8, name=f"fnd-test-c{os.getpid()}")
    dirs = cg.slot_dirs(0) + cg.slot_dirs(1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            _join(cg.slot_dirs(0))
            time.sleep(60)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 5
    while not cg.pids(0) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert cg.cleanup() == []  # kills the straggler first
    assert os.WTERMSIG(reap(pid)) == signal.SIGKILL
    parents = {os.path.dirname(d) for d in dirs}
    assert not any(os.path.exists(d) for d in [*dirs, *parents])


@pytest.mark.root_only
def test_stale_groups_of_dead_daemons_are_swept() -> None:
    assert os.geteuid() == 0
    layout = detect()
    dead = 4_000_000
    while os.path.exists(f"/proc/{dead}"):
        dead += 1
    stale = [os.path.join(base, f"fnd-{dead}", "slot-0") for base in layout.bases.values()]
    for directory in stale:
        os.makedirs(directory)
    cg = Cgroups.create(memory_bytes=0, pids_max=0, name=f"fnd-test-s{os.getpid()}", layout=layout)
    try:
        assert not any(os.path.exists(os.path.dirname(d)) for d in stale)
    finally:
        cg.cleanup()


@pytest.mark.root_only
def test_groups_of_another_pid_namespace_are_left_alone() -> None:
    # A daemon in another pid namespace (fnd as PID 1 in a container sharing this hierarchy)
    # has pids this one cannot see: its groups, and the workers in them, must survive.
    layout = detect()
    ours = os.stat("/proc/self/ns/pid").st_ino
    dead = 4_000_000
    while os.path.exists(f"/proc/{dead}"):
        dead += 1
    theirs = [os.path.join(base, f"fnd-{dead}-{ours + 1}", "slot-0")
              for base in layout.bases.values()]
    stale = [os.path.join(base, f"fnd-{dead}-{ours}", "slot-0") for base in layout.bases.values()]
    for directory in [*theirs, *stale]:
        os.makedirs(directory)
    try:
        cg = Cgroups.create(memory_bytes=0, pids_max=0, name=f"fnd-test-n{os.getpid()}",
                            layout=layout)
        cg.cleanup()
        assert all(os.path.isdir(d) for d in theirs)
        assert not any(os.path.exists(os.path.dirname(d)) for d in stale)
    finally:
        for directory in theirs:
            os.rmdir(directory)
            os.rmdir(os.path.dirname(directory))
