"""Per-slot scratch tmpfs (daemon/sandbox/scratch.py) below a scratch root made and swept by fd
(daemon/sandbox/scratch_root.py), with real mounts (run as root, as CI does)."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fnd.daemon.pool.output_cap import SLACK, OutputCap, Verdict
from fnd.daemon.sandbox.fd_mounts import mounts
from fnd.daemon.sandbox.scratch import ScratchError, ScratchMounts
from fnd.daemon.sandbox.scratch_root import ScratchRoot, pid_namespace, sweep_stale

MiB = 1024 * 1024
NOBODY = 65534


def mount_points() -> list[str]:
    return [m.point for m in mounts()]


def _dead_pid() -> int:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(dead.stdout)


def _root_named(parent: Path, name: str) -> ScratchRoot:
    """A scratch root as another daemon would have made it (root-owned, 0711)."""
    (parent / name).mkdir(0o711)
    return ScratchRoot(str(parent / name),
                       os.open(parent / name, os.O_RDONLY | os.O_DIRECTORY),
                       os.open(parent, os.O_RDONLY | os.O_DIRECTORY))


@pytest.fixture
def root(tmp_path: Path) -> Iterator[ScratchRoot]:
    assert os.geteuid() == 0, "mounting needs root (CI runs as root)"
    made = ScratchRoot.create(str(tmp_path))
    yield made
    made.remove()


@pytest.fixture
def scratch(root: ScratchRoot) -> Iterator[ScratchMounts]:
    mounts = ScratchMounts(root, 1 * MiB, 61000)
    yield mounts
    mounts.cleanup()


@pytest.mark.root_only
def test_the_root_is_unpredictable_root_owned_and_not_listable(tmp_path: Path) -> None:
    first, second = ScratchRoot.create(str(tmp_path)), ScratchRoot.create(str(tmp_path))
    try:
        assert first.path != second.path
        prefix = f"fnd-scratch-{pid_namespace()}-{os.getpid()}-"
        assert os.path.basename(first.path).startswith(prefix)
        st = os.lstat(first.path)
        assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o711)
    finally:
        first.remove()
        second.remove()
    assert not os.path.exists(first.path)


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
def test_cleanup_unmounts_and_removes_the_root(root: ScratchRoot,
                                               scratch: ScratchMounts) -> None:
    paths = [scratch.prepare(slot) for slot in (0, 1)]
    scratch.cleanup()
    root.remove()
    assert not set(paths) & set(mount_points())
    assert not os.path.exists(root.path)


_libc = ctypes.CDLL(None, use_errno=True)


@pytest.mark.root_only
def test_a_mount_fnd_did_not_make_is_never_unmounted(scratch: ScratchMounts) -> None:
    path = scratch.prepare(0)
    # Someone swaps the mount on the slot folder for their own.
    assert _libc.umount2(path.encode(), 2) == 0
    assert _libc.mount(b"theirs", path.encode(), b"tmpfs", 0, b"size=1m") == 0, ctypes.get_errno()
    try:
        with pytest.raises(ScratchError, match="not the one this fnd made"):
            scratch.release(0)
        scratch.cleanup()
        assert [m.source for m in mounts() if m.point == path] == ["theirs"]
    finally:
        _libc.umount2(path.encode(), 2)


@pytest.mark.root_only
def test_mounts_of_a_dead_daemon_of_this_namespace_are_swept(tmp_path: Path) -> None:
    stale_root = _root_named(tmp_path, f"fnd-scratch-{pid_namespace()}-{_dead_pid()}-x1")
    stale = ScratchMounts(stale_root, MiB, 61000)
    path = stale.prepare(0)
    alive = ScratchRoot.create(str(tmp_path))
    mine = ScratchMounts(alive, MiB, 61000)
    try:
        mounted = mine.prepare(0)
        assert sweep_stale(str(tmp_path)) == [stale_root.path]
        assert path not in mount_points() and not os.path.exists(stale_root.path)
        assert mounted in mount_points() and os.path.isdir(alive.path)
    finally:
        mine.cleanup()
        alive.remove()
        stale.cleanup()
        stale_root.remove()


@pytest.mark.root_only
def test_a_daemon_of_another_pid_namespace_is_never_judged(tmp_path: Path) -> None:
    # Its pid runs nothing here, which proves nothing: that pid is of another namespace.
    other = _root_named(tmp_path, f"fnd-scratch-{pid_namespace() + 1}-{_dead_pid()}-x2")
    theirs = ScratchMounts(other, MiB, 61000)
    path = theirs.prepare(0)
    try:
        assert sweep_stale(str(tmp_path)) == []
        assert path in mount_points() and os.path.isdir(other.path)
    finally:
        theirs.cleanup()
        other.remove()


@pytest.mark.root_only
def test_a_decoy_planted_by_another_uid_is_left_alone() -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="fnd-test-decoy-"))
    tmp_path.chmod(0o1777)  # as /tmp: anyone may plant (pytest's tmp_path is root's alone)
    target = tmp_path / "target"
    target.mkdir()
    (target / "kept").write_text("unchanged")
    decoy = tmp_path / f"fnd-scratch-{pid_namespace()}-{_dead_pid()}-x3"
    pid = os.fork()
    if pid == 0:  # as another user, as an attacker would
        try:
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            decoy.mkdir()
            (decoy / "slot-0").symlink_to(target)
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert decoy.lstat().st_uid == NOBODY
    made = ScratchRoot.create(str(tmp_path))
    try:
        assert sweep_stale(str(tmp_path)) == []
        assert (decoy / "slot-0").is_symlink() and str(target) not in mount_points()
        assert os.listdir(target) == ["kept"]
    finally:
        made.remove()
        shutil.rmtree(tmp_path)


# --- the daemon's output cap (daemon/pool/output_cap.py) ------------------------------------------


def test_output_cap_counts_per_invocation_and_cuts_once() -> None:
    cap = OutputCap()
    line = "y" * 99  # counts 100 bytes
    fits = (1000 + SLACK) // 100
    assert [cap.admit("a", line, 1000) for _ in range(fits)] == [Verdict.LOG] * fits
    assert cap.admit("a", line, 1000) is Verdict.TRUNCATE
    assert cap.admit("a", line, 1000) is Verdict.DROP
    assert cap.admit("b", line, 1000) is Verdict.LOG  # the next call starts afresh
    assert cap.admit(None, line * 10_000, 0) is Verdict.LOG  # max_output = 0: no cap
