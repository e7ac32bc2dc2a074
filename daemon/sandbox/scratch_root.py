"""The scratch root: the one folder under which this daemon's slot scratch folders live.

Made fresh at every start in $TMPDIR (a private /tmp under the systemd unit) with a name no
other user can predict or pre-create: ``fnd-scratch-<pid namespace>-<pid>-<random>``, made by
mkdtemp, whose mkdir fails on anything already there (a folder, a symlink). It is then opened
``O_NOFOLLOW`` and checked by fd: a directory, owned by the daemon's uid, writable by nobody
else. As root it is 0711: a worker reaches its own slot, lists no other. /tmp is sticky, so
nobody else can rename or remove it, and everything below it is made by the daemon relative
to its fd. A decoy planted under the old, predictable ``fnd-<pid>-scratch`` name, or under
any other, is never looked at (docs/sandbox.md#scratch).

`sweep_stale` judges neighbours by their namespace: it removes only roots of this daemon's
own pid namespace whose pid runs no process, and only those owned by the daemon's uid. A
root of another pid namespace (fnd as PID 1 in a container, `unshare --pid`) names a pid
that means nothing here: it is never touched, however dead its pid looks from here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile

from fnd.daemon.sandbox import fd_mounts

PREFIX = "fnd-scratch-"
SOURCE = "fnd-scratch"  # the source name of every scratch tmpfs (mountinfo shows it)
_NAME = re.compile(r"fnd-scratch-(\d+)-(\d+)-[A-Za-z0-9_]+")
_ROOT_MODE = 0o711  # workers may traverse to their own dir, not list the others


class ScratchRootError(OSError):
    """The scratch root could not be made safely; the message says why."""


def pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def roots_of(pid: int, parent: str | None = None) -> list[str]:
    """The scratch roots made by the daemon with this pid (its own namespace or any)."""
    parent = parent or tempfile.gettempdir()
    return sorted(os.path.join(parent, name) for name in os.listdir(parent)
                  if (m := _NAME.fullmatch(name)) and int(m[2]) == pid)


def _open_checked(name: str, dir_fd: int | None, shown: str) -> int:
    """An fd of the directory `name`, refused unless it is ours and writable by nobody else."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise ScratchRootError(f"{shown} is not a folder of uid {os.geteuid()} that only it "
                               f"can write (owner {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})")
    return fd


class ScratchRoot:
    """This daemon's scratch root, held open by fd from its creation to `remove`."""

    def __init__(self, path: str, fd: int, parent_fd: int) -> None:
        self.path = path
        self.fd = fd
        self._parent_fd = parent_fd

    @classmethod
    def create(cls, parent: str | None = None) -> ScratchRoot:
        parent = parent or tempfile.gettempdir()
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            path = tempfile.mkdtemp(prefix=f"{PREFIX}{pid_namespace()}-{os.getpid()}-",
                                    dir=parent)
            fd = _open_checked(os.path.basename(path), parent_fd, path)
        except BaseException:
            os.close(parent_fd)
            raise
        if os.geteuid() == 0:
            os.fchmod(fd, _ROOT_MODE)
        return cls(path, fd, parent_fd)

    def remove(self) -> None:
        """Remove the root and what is below it (its mounts must be gone: see ScratchMounts)."""
        if self.fd < 0:
            return
        with os.scandir(self.fd) as entries:
            names = [entry.name for entry in entries]
        for name in names:
            if _mounted_below(self.fd, name):
                continue  # never delete inside a mount that is still there
            shutil.rmtree(name, ignore_errors=True, dir_fd=self.fd)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.basename(self.path), dir_fd=self._parent_fd)
        os.close(self.fd)
        os.close(self._parent_fd)
        self.fd = self._parent_fd = -1


def _mounted_below(dir_fd: int, name: str) -> bool:
    try:
        fd = fd_mounts.open_dir(name, dir_fd)
    except OSError:
        return False  # not a directory: nothing can be mounted on it
    try:
        return fd_mounts.mount_id(fd) != fd_mounts.mount_id(dir_fd)
    finally:
        os.close(fd)


def unmount_ours(dir_fd: int, name: str) -> bool:
    """Detach every scratch tmpfs stacked on `name` (below `dir_fd`); False when something
    else is mounted there (left alone)."""
    while True:
        try:
            fd = fd_mounts.open_dir(name, dir_fd)
        except OSError:
            return True
        try:
            mount = fd_mounts.mount_id(fd)
            if mount == fd_mounts.mount_id(dir_fd):
                return True
            found = fd_mounts.find(mount)
            if found is None or (found.fstype, found.source) != ("tmpfs", SOURCE):
                return False
            fd_mounts.unmount(fd, found.point)
        finally:
            os.close(fd)


def sweep_stale(parent: str | None = None) -> list[str]:
    """Remove the scratch roots (and their tmpfs) of daemons of this pid namespace that are
    gone. Returns the paths removed."""
    parent = parent or tempfile.gettempdir()
    removed = []
    own_namespace = pid_namespace()
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in os.listdir(parent_fd):
            match = _NAME.fullmatch(name)
            if match is None or int(match[1]) != own_namespace or int(match[2]) == os.getpid():
                continue
            if os.path.exists(f"/proc/{match[2]}"):
                continue  # alive (or its pid reused): not ours to judge
            try:
                fd = _open_checked(name, parent_fd, os.path.join(parent, name))
            except OSError:
                continue  # someone else's (or not a folder): planted, left alone
            try:
                if all([unmount_ours(fd, slot) for slot in os.listdir(fd)]):
                    shutil.rmtree(name, ignore_errors=True, dir_fd=parent_fd)
                    removed.append(os.path.join(parent, name))
            except OSError:
                continue
            finally:
                os.close(fd)
    finally:
        os.close(parent_fd)
    return removed


def has_entries(dir_fd: int, name: str, missing: bool = False) -> bool:
    """Anything in the folder `name` below `dir_fd` (one directory read; not followed if a
    symlink). A missing folder counts as `missing`; one that cannot be read as not empty."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except FileNotFoundError:
        return missing
    except OSError:
        return True
    try:
        with os.scandir(fd) as entries:
            return next(entries, None) is not None
    except OSError:
        return True
    finally:
        os.close(fd)
