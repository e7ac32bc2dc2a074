"""Per-slot scratch folders with a size limit: one tmpfs per slot, mounted by the daemon.

A worker's only writable place is ``<scratch root>/slot-N`` (daemon/sandbox/scratch_root.py).
Without a bound, a function could fill the host's disk through it. Each slot gets its own tmpfs
(``size=scratch_bytes``, owned by the slot's uid, mode 0700), so a write beyond the bound
fails inside the function with ENOSPC; tmpfs pages are charged to the memory cgroup of the
process that writes them, so a worker's files also count against its ``memory_mb``.

Emptying is a fresh mount rather than deleting files: it costs the same (~0.1 ms) whatever
the worker left, and a process that is still dying can only write into the detached old
mount, which is freed with its last open file. Mounting needs CAP_SYS_ADMIN (the daemon runs
as root; the unit file grants it to the daemon, workers never hold it).

Every mount is made on, and removed through, a file descriptor opened below the root's fd
without following symlinks; an fd of each mount's root is kept, and only a mount with that
fd's mount id is ever unmounted (docs/sandbox.md#scratch).

Usage::

    scratch = ScratchMounts(root, size_bytes, uid_base)   # root: a ScratchRoot
    scratch.prepare(slot)        # before the slot's worker is forked: mounted and empty
    scratch.release(slot)        # when the slot's last process is gone: empty again
    scratch.cleanup()            # at stop: unmount what this daemon mounted
"""

from __future__ import annotations

import contextlib
import errno
import os

from fnd.daemon.sandbox import fd_mounts
from fnd.daemon.sandbox.fd_mounts import MountError as ScratchError
from fnd.daemon.sandbox.scratch_root import SOURCE, ScratchRoot, has_entries

__all__ = ["ScratchError", "ScratchMounts"]


class ScratchMounts:
    """The scratch tmpfs of every slot of this daemon, by mount id."""

    def __init__(self, root: ScratchRoot, size_bytes: int, uid_base: int) -> None:
        self.root = root
        self.size_bytes = size_bytes
        self.uid_base = uid_base
        # An O_PATH fd of each slot's tmpfs root. Held open, it keeps the mount's id from
        # being reused, so an equal id on the slot folder proves the mount there is this one.
        self._mounted: dict[int, tuple[int, int]] = {}  # slot -> (that fd, its mount id)
        self._bare = fd_mounts.mount_id(root.fd)  # the mount a slot folder is on unmounted

    def path(self, slot: int) -> str:
        return os.path.join(self.root.path, f"slot-{slot}")

    def _options(self, slot: int) -> str:
        uid = self.uid_base + slot
        # One inode per page at most: tmpfs' default (half the RAM's pages) is no bound.
        inodes = max(1024, self.size_bytes // 4096)
        return f"size={self.size_bytes},nr_inodes={inodes},mode=0700,uid={uid},gid={uid}"

    def _open(self, slot: int) -> int:
        return fd_mounts.open_dir(f"slot-{slot}", self.root.fd)

    def _mount(self, slot: int) -> None:
        """A fresh tmpfs on the bare slot folder; an fd of its root is kept."""
        fd = self._open(slot)
        try:
            if fd_mounts.mount_id(fd) != self._bare:
                raise ScratchError(errno.EBUSY, f"{self.path(slot)} already has a mount "
                                                "this fnd did not make; left alone")
            fd_mounts.mount_tmpfs(fd, SOURCE, self._options(slot), self.path(slot))
        finally:
            os.close(fd)
        mine = self._open(slot)
        self._mounted[slot] = (mine, fd_mounts.mount_id(mine))

    def _unmount(self, slot: int) -> None:
        """Detach the slot's tmpfs, only if the mount there is the one this daemon made."""
        mine, mount = self._mounted.pop(slot)
        try:
            fd = self._open(slot)
            try:
                if fd_mounts.mount_id(fd) != mount:
                    raise ScratchError(errno.EBUSY, f"the mount on {self.path(slot)} is not "
                                                    "the one this fnd made; left alone")
            finally:
                os.close(fd)
            fd_mounts.unmount(mine, self.path(slot))
        finally:
            os.close(mine)

    def prepare(self, slot: int) -> str:
        """Mount the slot's tmpfs (first use) or make sure it is empty. Raises ScratchError."""
        if slot not in self._mounted:
            with contextlib.suppress(FileExistsError):
                os.mkdir(f"slot-{slot}", 0o700, dir_fd=self.root.fd)
            self._mount(slot)
        elif self.has_files(slot):
            self.release(slot)
        return self.path(slot)

    def has_files(self, slot: int) -> bool:
        """Anything left in the slot's scratch (one directory read)."""
        # unreadable or gone from under its mount: start it afresh
        return slot in self._mounted and has_entries(self.root.fd, f"slot-{slot}", missing=True)

    def release(self, slot: int) -> None:
        """Empty the slot's scratch: a fresh tmpfs in place of the old one."""
        if slot not in self._mounted:
            return
        self._unmount(slot)  # not mounted any more as far as prepare() knows, if this fails
        self._mount(slot)

    def cleanup(self) -> None:
        """Unmount every slot's tmpfs this daemon made (at stop)."""
        for slot in sorted(self._mounted):
            with contextlib.suppress(OSError):
                self._unmount(slot)
        self._mounted.clear()
