"""Per-slot scratch tmpfs (daemon/scratch.py), with real mounts (run as root, as CI does)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fnd.daemon.output_cap import SLACK, OutputCap, Verdict
from fnd.daemon.scratch import ScratchMounts, mount_points, sweep_stale

MiB = 1024 * 1024


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[ScratchMounts]:
    assert os.geteuid() == 0, "mounting needs root (CI runs as root)"
    mounts = ScratchMounts(str(tmp_path / f"fnd-{os.getpid()}-scratch"), 1 * MiB, 61000)
    yield mounts
    mounts.cleanup()


@pytest.mark.root_only
def test_each_slot_is_its_own_bounded_tmpfs(scratch: ScratchMounts) -> None:
    path = scratch.prepare(3)
    assert path in mount_points()
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (61003, 61003, 0o700)
    vfs = os.statvfs(path)
    assert vfs.f_blocks * vfs.f_frsize == 1 * MiB
    with open(os.path.join(path, "big"), "wb") as f, pytest.raises(OSError) as caught:
        f.write(b"x" * 2 * MiB)
        f.flush()
    assert caught.value.errno == errno.ENOSPC


@pytest.mark.root_only
def test_release_and_prepare_leave_it_empty(scratch: ScratchMounts) -> None:
    path = scratch.prepare(0)
    assert not scratch.has_files(0)
    Path(path, "left").write_text("behind")
    os.mkdir(os.path.join(path, "dir"), 0)
    assert scratch.has_files(0)
    scratch.release(0)
    assert os.listdir(path) == [] and not scratch.has_files(0)
    Path(path, "again").write_text("x")
    assert scratch.prepare(0) == path and os.listdir(path) == []
    assert mount_points().count(path) == 1  # the old mount was detached, not stacked


@pytest.mark.root_only
def test_cleanup_unmounts_and_removes_the_root(scratch: ScratchMounts) -> None:
    paths = [scratch.prepare(slot) for slot in (0, 1)]
    scratch.cleanup()
    assert not set(paths) & set(mount_points())
    assert not os.path.exists(scratch.root)


@pytest.mark.root_only
def test_mounts_of_a_dead_daemon_are_swept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = ScratchMounts(str(tmp_path / f"fnd-{dead.stdout.strip()}-scratch"), MiB, 61000)
    path = stale.prepare(0)
    alive = ScratchMounts(str(tmp_path / f"fnd-{os.getpid()}-scratch"), MiB, 61000)
    try:
        mine = alive.prepare(0)
        assert sweep_stale(str(tmp_path)) == [path]
        assert path not in mount_points() and not os.path.exists(stale.root)
        assert mine in mount_points()
    finally:
        alive.cleanup()
        stale.cleanup()


# --- the daemon's output cap (daemon/output_cap.py) --------------------------------------------


def test_output_cap_counts_per_invocation_and_cuts_once() -> None:
    cap = OutputCap()
    line = "y" * 99  # counts 100 bytes
    fits = (1000 + SLACK) // 100
    assert [cap.admit("a", line, 1000) for _ in range(fits)] == [Verdict.LOG] * fits
    assert cap.admit("a", line, 1000) is Verdict.TRUNCATE
    assert cap.admit("a", line, 1000) is Verdict.DROP
    assert cap.admit("b", line, 1000) is Verdict.LOG  # the next call starts afresh
    assert cap.admit(None, line * 10_000, 0) is Verdict.LOG  # max_output = 0: no cap
