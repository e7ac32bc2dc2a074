"""The few libc entry points the sandbox needs (prctl, raw syscalls, mallopt), via ctypes."""

from __future__ import annotations

import ctypes
import os
import platform

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
SECCOMP_MODE_FILTER = 2
M_ARENA_MAX = -8

# Syscall numbers the sandbox (and its tests) call directly. Numbers from 424 up are the same
# on every architecture; the older ones differ between x86_64 and aarch64.
_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "landlock_create_ruleset": 444,
        "landlock_add_rule": 445,
        "landlock_restrict_self": 446,
        "clone3": 435,
        "bpf": 321,
        "keyctl": 250,
        "ptrace": 101,
        "unshare": 272,
        "mount": 165,
        "setns": 308,
        "socket": 41,
        "socketpair": 53,
    },
    "aarch64": {
        "landlock_create_ruleset": 444,
        "landlock_add_rule": 445,
        "landlock_restrict_self": 446,
        "clone3": 435,
        "bpf": 280,
        "keyctl": 219,
        "ptrace": 117,
        "unshare": 97,
        "mount": 40,
        "setns": 268,
        "socket": 198,
        "socketpair": 199,
    },
}

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl.restype = ctypes.c_int
libc.prctl.argtypes = (
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
)
libc.mallopt.restype = ctypes.c_int
libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)


def syscall_number(name: str) -> int:
    """The number of ``name`` on this machine; KeyError on an architecture we don't know."""
    machine = platform.machine()
    try:
        return _SYSCALLS[machine][name]
    except KeyError:
        raise KeyError(f"no syscall number for {name} on {machine}") from None


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def syscall(name: str, *args: object) -> int:
    """Call a raw syscall by name; raise OSError with the errno on failure.

    Pass ctypes values (c_int, c_void_p, byref(...)): a bare int travels as a C int.
    """
    result = int(libc.syscall(ctypes.c_long(syscall_number(name)), *args))
    return _check(result, name)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(int(libc.prctl(option, arg2, arg3, arg4, arg5)), f"prctl({option})")


def mallopt(param: int, value: int) -> bool:
    return bool(libc.mallopt(param, value))
