"""Per-slot scratch folders with a size limit: one tmpfs per slot, mounted by the daemon.

A worker's only writable place is ``scratch_root/slot-N``. Without a bound, a function could
fill the host's disk through it. Each slot gets its own tmpfs (``size=scratch_bytes``, owned
by the slot's uid, mode 0700), so a write beyond the bound fails inside the function with
ENOSPC; tmpfs pages are charged to the memory cgroup of the process that writes them, so a
worker's files also count against its ``memory_mb``.

Emptying is a fresh mount rather than deleting files: it costs the same (~0.1 ms) whatever
the worker left, and a process that is still dying can only write into the detached old
mount, which is freed with its last open file. Mounting needs CAP_SYS_ADMIN (the daemon runs
as root; the unit file grants it to the daemon, workers never hold it).

Usage::

    scratch = ScratchMounts(root, size_bytes, uid_base)
    scratch.prepare(slot)        # before the slot's worker is forked: mounted and empty
    scratch.release(slot)        # when the slot's last process is gone: empty again
    scratch.cleanup()            # at stop: unmount everything, remove the root
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil

_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MNT_DETACH = 0x2
_ROOT_MODE = 0o711  # workers may traverse to their own dir, not list the others
_STALE = re.compile(r"fnd-(\d+)-scratch")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class ScratchError(OSError):
    """A slot's scratch tmpfs could not be mounted or emptied; the message says why."""


def _error(code: int, what: str) -> ScratchError:
    hint = " (needs CAP_SYS_ADMIN)" if code == errno.EPERM else ""
    return ScratchError(code, f"{what}: {os.strerror(code)}{hint}")


def _mount_tmpfs(path: str, options: str) -> None:
    if _libc.mount(b"fnd-scratch", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                   options.encode()) != 0:
        raise _error(ctypes.get_errno(), f"cannot mount a tmpfs on {path}")


def _umount(path: str) -> bool:
    """Detach the mount at ``path``; False if nothing was mounted there."""
    if _libc.umount2(path.encode(), _MNT_DETACH) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):
        return False
    raise _error(code, f"cannot unmount {path}")


def mount_points(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Every tmpfs mount point of this mount namespace."""
    points = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5 and right.split()[:1] == ["tmpfs"]:
                points.append(fields[4].replace("\\040", " "))
    return points


class ScratchMounts:
    """The scratch tmpfs of every slot of this daemon."""

    def __init__(self, root: str, size_bytes: int, uid_base: int) -> None:
        self.root = root
        self.size_bytes = size_bytes
        self.uid_base = uid_base
        self._mounted: set[int] = set()

    def path(self, slot: int) -> str:
        return os.path.join(self.root, f"slot-{slot}")

    def _options(self, slot: int) -> str:
        uid = self.uid_base + slot
        # One inode per page at most: tmpfs' default (half the RAM's pages) is no bound.
        inodes = max(1024, self.size_bytes // 4096)
        return f"size={self.size_bytes},nr_inodes={inodes},mode=0700,uid={uid},gid={uid}"

    def prepare(self, slot: int) -> str:
        """Mount the slot's tmpfs (first use) or make sure it is empty. Raises ScratchError."""
        path = self.path(slot)
        if slot not in self._mounted:
            os.makedirs(self.root, mode=_ROOT_MODE, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
            while os.path.ismount(path) and _umount(path):  # left by an earlier daemon
                pass
            _mount_tmpfs(path, self._options(slot))
            self._mounted.add(slot)
        elif self.has_files(slot):
            self.release(slot)
        return path

    def has_files(self, slot: int) -> bool:
        """Anything left in the slot's scratch (one directory read)."""
        if slot not in self._mounted:
            return False
        try:
            with os.scandir(self.path(slot)) as entries:
                return next(entries, None) is not None
        except OSError:
            return True  # unreadable: start it afresh

    def release(self, slot: int) -> None:
        """Empty the slot's scratch: a fresh tmpfs in place of the old one."""
        if slot not in self._mounted:
            return
        path = self.path(slot)
        _umount(path)
        try:
            _mount_tmpfs(path, self._options(slot))
        except ScratchError:
            self._mounted.discard(slot)  # prepare() tries again from scratch
            raise

    def cleanup(self) -> None:
        """Unmount every slot's tmpfs and remove the root (at stop)."""
        for slot in sorted(self._mounted):
            with contextlib.suppress(OSError):
                _umount(self.path(slot))
        self._mounted.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def sweep_stale(parent: str) -> list[str]:
    """Unmount and remove scratch mounts of daemons that are gone (``fnd-<pid>-scratch``)."""
    removed = []
    prefix = parent.rstrip("/") + "/"
    for point in mount_points():
        if not point.startswith(prefix):
            continue
        match = _STALE.fullmatch(point[len(prefix):].split("/", 1)[0])
        if not match or os.path.exists(f"/proc/{match[1]}"):
            continue
        with contextlib.suppress(OSError):
            _umount(point)
            removed.append(point)
    for point in removed:
        shutil.rmtree(os.path.dirname(point), ignore_errors=True)
    return removed
