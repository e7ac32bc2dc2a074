"""Open a file below a directory handle without following any symlink on the way.

The daemon runs as root while the project folder may be writable by someone else, so a
path that was a plain file at scan time can be a symlink (to ``/etc/shadow``) by the time it
is opened. :func:`open_beneath` resolves a relative path inside an open directory and refuses
a symlink at *any* component with ``ELOOP``, and a path that would leave the directory with
``EXDEV``.

It uses ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` (Linux 5.6+). Where that syscall
is missing (``ENOSYS``, or ``EPERM`` from a container's seccomp filter) it walks the path one
component at a time with ``O_NOFOLLOW`` relative to the previous component's handle, which
gives the same guarantee with a few more syscalls.

Files are opened ``O_NONBLOCK`` so that a FIFO swapped in for a file cannot hang the opening
thread; for a regular file the flag changes nothing. Checking *what* was opened (a regular
file, the one expected) is the caller's business: see :mod:`fnd.daemon.http.asset_files`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08

# openat2 has the same number on every architecture that got it through the unified table.
_OPENAT2 = {"x86_64": 437, "aarch64": 437, "armv7l": 437, "riscv64": 437, "ppc64le": 437,
            "s390x": 437, "i686": 437}.get(platform.machine())


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class _Openat2:
    """The raw syscall through libc's ``syscall()``; ``usable`` drops to False on ENOSYS."""

    def __init__(self) -> None:
        self.usable = _OPENAT2 is not None
        self._syscall = None
        if self.usable:
            libc = ctypes.CDLL(None, use_errno=True)
            self._syscall = libc.syscall
            self._syscall.restype = ctypes.c_long
            self._syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p,
                                      ctypes.c_void_p, ctypes.c_size_t]
        self._how = _OpenHow(
            _FILE_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
        )

    def __call__(self, dir_fd: int, relpath: bytes) -> int:
        assert self._syscall is not None
        err = errno.EAGAIN
        for _ in range(3):
            fd = int(self._syscall(_OPENAT2, dir_fd, relpath, ctypes.byref(self._how),
                                   ctypes.sizeof(self._how)))
            if fd >= 0:
                return fd
            err = ctypes.get_errno()
            # EAGAIN: the kernel saw a concurrent rename and could not vouch for the walk.
            if err not in (errno.EINTR, errno.EAGAIN):
                break
        raise OSError(err, os.strerror(err))


_openat2 = _Openat2()


def open_beneath(dir_fd: int, relpath: str) -> int:
    """A read-only fd for ``relpath`` under ``dir_fd``, no symlink followed anywhere.

    Raises OSError: ``ELOOP`` when a component is a symlink, ``EXDEV`` or ``ValueError``
    for a path that is absolute or climbs out, ``ENOENT``/``ENOTDIR`` when it is gone.
    """
    parts = relpath.split("/")
    if relpath.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a plain relative path: {relpath!r}")
    if _openat2.usable:
        try:
            return _openat2(dir_fd, os.fsencode(relpath))
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            _openat2.usable = False  # an old kernel or a seccomp filter: walk from now on
    return open_walking(dir_fd, parts)


def open_walking(dir_fd: int, parts: list[str]) -> int:
    """The fallback: one ``O_NOFOLLOW`` open per component, each relative to the last."""
    current = dir_fd
    try:
        for name in parts[:-1]:
            child = _step(current, name, _DIR_FLAGS)
            if current != dir_fd:
                os.close(current)
            current = child
        return _step(current, parts[-1], _FILE_FLAGS)
    finally:
        if current != dir_fd:
            os.close(current)


def _step(parent: int, name: str, flags: int) -> int:
    try:
        return os.open(name, flags, dir_fd=parent)
    except OSError as exc:
        # O_DIRECTORY | O_NOFOLLOW on a symlink says ENOTDIR: report it as the symlink it is.
        if exc.errno == errno.ENOTDIR and _is_symlink(parent, name):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name) from None
        raise


def _is_symlink(parent: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_directory(path: str) -> int:
    """A handle on the directory ``path`` (itself resolved normally) to open files under."""
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
