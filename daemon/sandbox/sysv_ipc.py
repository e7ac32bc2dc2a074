"""The second belt around System V IPC: remove what a slot's uid left behind.

Workers cannot make System V objects (seccomp refuses shmget, msgget, semget and their
siblings), but a segment, queue or semaphore set outlives every process that made it: it
stays charged to the slot's memory cgroup, readable by its next worker, and counted in the
host-wide tables. So when a slot is emptied the daemon (root) removes every object whose
owner or creator is that slot's uid, and at start and stop every object of its uid range
(docs/sandbox.md#system-v-ipc).

One read of each of ``/proc/sysvipc/{shm,msg,sem}`` (~17 µs together when they are empty),
then ``IPC_RMID`` for what matches, which needs CAP_SYS_ADMIN for objects of other uids.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Container
from dataclasses import dataclass

KINDS = ("shm", "msg", "sem")
IPC_RMID = 0
_ID_COLUMN = {"shm": "shmid", "msg": "msqid", "sem": "semid"}
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class IpcObject:
    """One System V object as /proc/sysvipc lists it."""

    kind: str  # "shm", "msg" or "sem"
    ident: int  # the id IPC_RMID takes
    key: int
    uid: int  # owner (IPC_SET can change it)
    cuid: int  # creator (never changes)


def parse(kind: str, text: str) -> list[IpcObject]:
    """The objects of one /proc/sysvipc file; columns are found by their header names."""
    lines = text.splitlines()
    if not lines:
        return []
    header = lines[0].split()
    try:
        at = {name: header.index(name) for name in ("key", _ID_COLUMN[kind], "uid", "cuid")}
    except ValueError as exc:
        raise ValueError(f"/proc/sysvipc/{kind}: unexpected header {lines[0].strip()!r}") from exc
    found = []
    for line in lines[1:]:
        fields = line.split()
        if len(fields) < len(header):
            continue
        found.append(IpcObject(kind, int(fields[at[_ID_COLUMN[kind]]]), int(fields[at["key"]]),
                               int(fields[at["uid"]]), int(fields[at["cuid"]])))
    return found


def listed(root: str = "/proc/sysvipc") -> list[IpcObject]:
    """Every System V object of this IPC namespace (none where the kernel has no SysV IPC)."""
    found: list[IpcObject] = []
    for kind in KINDS:
        try:
            with open(os.path.join(root, kind), "rb") as f:
                text = f.read().decode("ascii", "replace")
        except FileNotFoundError:
            continue
        found += parse(kind, text)
    return found


def owned_by(uids: Container[int], root: str = "/proc/sysvipc") -> list[IpcObject]:
    """The objects whose owner or creator is one of ``uids``."""
    return [obj for obj in listed(root) if obj.uid in uids or obj.cuid in uids]


def remove(obj: IpcObject) -> None:
    """IPC_RMID: a queue or semaphore set goes at once, a segment once its last process
    detaches (the slot has none left). Gone already is fine; other errors raise OSError."""
    if obj.kind == "shm":
        result = _libc.shmctl(obj.ident, IPC_RMID, None)
    elif obj.kind == "msg":
        result = _libc.msgctl(obj.ident, IPC_RMID, None)
    else:
        result = _libc.semctl(obj.ident, 0, IPC_RMID)
    if result < 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.EIDRM):  # removed since it was listed
            raise OSError(code, f"cannot remove System V {obj.kind} {obj.ident}: "
                                f"{os.strerror(code)}")


def remove_owned_by(uids: Container[int],
                    root: str = "/proc/sysvipc") -> tuple[list[IpcObject], list[str]]:
    """Remove every object of ``uids``: (removed, one error message per failure)."""
    removed: list[IpcObject] = []
    errors: list[str] = []
    for obj in owned_by(uids, root):
        try:
            remove(obj)
        except OSError as exc:
            errors.append(exc.strerror or str(exc))
        else:
            removed.append(obj)
    return removed, errors
