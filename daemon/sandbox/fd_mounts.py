"""Mounts made and removed through file descriptors, never through a path a symlink could bend.

A tmpfs is mounted on ``/proc/self/fd/N`` of a directory opened ``O_PATH | O_NOFOLLOW``, so it
lands on that very directory whatever is swapped in its place meanwhile; a mount is removed
the same way, after its mount id (``mnt_id`` in ``/proc/self/fdinfo/N``) was compared with the
one recorded when it was made: fnd never unmounts a mount it did not make
(docs/sandbox.md#scratch).
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

MS_NOSUID = 0x2
MS_NODEV = 0x4
_MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountError(OSError):
    """A mount could not be made or removed; the message says which and why."""


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    point: str
    fstype: str
    source: str


def error(code: int, what: str) -> MountError:
    hint = " (needs CAP_SYS_ADMIN)" if code == errno.EPERM else ""
    return MountError(code, f"{what}: {os.strerror(code)}{hint}")


def open_dir(name: str, dir_fd: int | None = None) -> int:
    """An O_PATH fd of the directory `name` (relative to `dir_fd`); a symlink is refused."""
    return os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                   dir_fd=dir_fd)


def mount_id(fd: int) -> int:
    """The id of the mount the fd's file is on (for a mount's root: that mount)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise MountError(errno.ENOTSUP, "this kernel shows no mnt_id in /proc/self/fdinfo")


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    """Every mount of this mount namespace."""
    found = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 2:
                point = fields[4].replace("\\040", " ").replace("\\134", "\\")
                found.append(Mount(int(fields[0]), point, tail[0], tail[1]))
    return found


def find(mount: int) -> Mount | None:
    return next((m for m in mounts() if m.mount_id == mount), None)


def mount_tmpfs(fd: int, source: str, options: str, shown: str) -> None:
    """Mount a tmpfs on the directory `fd` refers to (`shown` names it in errors)."""
    if _libc.mount(source.encode(), f"/proc/self/fd/{fd}".encode(), b"tmpfs",
                   MS_NOSUID | MS_NODEV, options.encode()) != 0:
        raise error(ctypes.get_errno(), f"cannot mount a tmpfs on {shown}")


def unmount(fd: int, shown: str) -> None:
    """Detach the mount whose root `fd` refers to (lazily: open files keep it until closed)."""
    if _libc.umount2(f"/proc/self/fd/{fd}".encode(), _MNT_DETACH) != 0:
        raise error(ctypes.get_errno(), f"cannot unmount {shown}")
