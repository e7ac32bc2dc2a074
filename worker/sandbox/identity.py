"""Dropping root for good, and the prctl flags that go with it."""

from __future__ import annotations

import os
import signal

from fnd.worker.sandbox.libc import (
    PR_GET_DUMPABLE,
    PR_GET_NO_NEW_PRIVS,
    PR_SET_DUMPABLE,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    prctl,
)


class IdentityError(Exception):
    pass


def drop_to(uid: int, gid: int) -> None:
    """No supplementary groups, then real/effective/saved gid and uid; verify root is gone."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise IdentityError(f"ids are {os.getresuid()}/{os.getresgid()} after the change")
    if os.getgroups():
        raise IdentityError(f"supplementary groups {os.getgroups()} remain")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise IdentityError("setuid(0) still succeeds")


def die_with_parent(parent: int) -> bool:
    """PDEATHSIG(SIGKILL) (after setuid, which clears it). False if ``parent`` is gone."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    return os.getppid() == parent


def not_dumpable() -> None:
    prctl(PR_SET_DUMPABLE, 0)
    if prctl(PR_GET_DUMPABLE) != 0:
        raise IdentityError("still dumpable")


def no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if prctl(PR_GET_NO_NEW_PRIVS) != 1:
        raise IdentityError("no_new_privs did not stick")
