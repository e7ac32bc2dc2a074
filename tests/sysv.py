"""Real System V objects for the tests of the daemon's IPC belt (daemon/sandbox/sysv_ipc.py).

Made by root with libc, handed to a worker uid with IPC_SET (owner) or made by a child that
runs as that uid (creator), removed with IPC_RMID whatever the test's outcome.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

from fnd.daemon.sandbox.sysv_ipc import IpcObject, listed, remove

IPC_PRIVATE = 0
IPC_CREAT = 0o1000
IPC_SET = 1
IPC_STAT = 2
_UID_OFFSET = 4  # struct ipc_perm: int __key; uid_t uid; gid_t gid; uid_t cuid; ...
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def make(kind: str, size: int = 1024 * 1024) -> int:
    """A new private object of ``kind`` ("shm" of ``size`` bytes, "msg", "sem"); its id."""
    if kind == "shm":
        return _check(_libc.shmget(IPC_PRIVATE, ctypes.c_size_t(size), IPC_CREAT | 0o600),
                      "shmget")
    if kind == "msg":
        return _check(_libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600), "msgget")
    return _check(_libc.semget(IPC_PRIVATE, 1, IPC_CREAT | 0o600), "semget")


def hand_to(kind: str, ident: int, uid: int) -> None:
    """IPC_SET the object's owner (uid and gid) to ``uid``; its creator stays."""
    buf = ctypes.create_string_buffer(512)  # larger than any *id_ds
    ctl = {"shm": _libc.shmctl, "msg": _libc.msgctl}[kind]
    _check(ctl(ident, IPC_STAT, buf), f"{kind}ctl IPC_STAT")
    ctypes.c_uint32.from_buffer(buf, _UID_OFFSET).value = uid
    ctypes.c_uint32.from_buffer(buf, _UID_OFFSET + 4).value = uid
    _check(ctl(ident, IPC_SET, buf), f"{kind}ctl IPC_SET")


def make_as(uid: int, kind: str) -> int:
    """An object created by a child running as ``uid`` (so its creator is ``uid``)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.write(w, str(make(kind)).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        answer = os.read(r, 64)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    if not answer:
        raise OSError(f"the child running as uid {uid} could not make a {kind} object")
    return int(answer)


def exists(kind: str, ident: int) -> bool:
    return any(o.kind == kind and o.ident == ident for o in listed())


def of_uids(first: int, last: int) -> list[IpcObject]:
    """Objects whose owner or creator is in first..last."""
    return [o for o in listed() if first <= o.uid <= last or first <= o.cuid <= last]


@contextlib.contextmanager
def removed_after(objects: list[tuple[str, int]]) -> Iterator[list[tuple[str, int]]]:
    """Yield ``objects`` ((kind, id) pairs, filled by the caller); IPC_RMID what is left."""
    try:
        yield objects
    finally:
        for kind, ident in objects:
            if exists(kind, ident):
                with contextlib.suppress(OSError):
                    remove(IpcObject(kind, ident, 0, 0, 0))
