"""Landlock through raw syscalls: read-only and read-write path rules, TCP and scope limits.

Landlock is an allow-list: once the ruleset is enforced, a handled access to a path outside
every rule fails with EACCES. Nothing here needs privileges, only ``no_new_privs``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass

from fnd.worker.sandbox.libc import syscall

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

READ_ONLY = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
READ_WRITE_FILE = FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV

_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The kernel's Landlock ABI, 0 when Landlock is missing or disabled."""
    try:
        return syscall(
            "landlock_create_ruleset",
            ctypes.c_void_p(None),
            ctypes.c_size_t(0),
            ctypes.c_uint32(_CREATE_RULESET_VERSION),
        )
    except (OSError, KeyError):
        return 0


def handled_fs(abi: int) -> int:
    rights = (FS_MAKE_SYM << 1) - 1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


@dataclass(frozen=True)
class Plan:
    """What to enforce; built once in the zygote, enforced in each worker."""

    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    rules: tuple[tuple[str, int], ...]  # (path, access) granted to every worker

    def describe(self) -> str:
        parts = [f"abi {self.abi}"]
        if self.scoped:
            parts.append("scoped signals+abstract sockets")
        if self.handled_net & NET_CONNECT_TCP:
            parts.append("no tcp")
        elif self.handled_net & NET_BIND_TCP:
            parts.append("no tcp bind")
        return ", ".join(parts)


def make_plan(
    abi: int, read_only: list[str], read_write_files: list[str], network: bool, tcp_bind: bool
) -> Plan:
    handled_net = 0
    if abi >= 4:
        if not network:
            handled_net = NET_BIND_TCP | NET_CONNECT_TCP
        elif not tcp_bind:
            handled_net = NET_BIND_TCP
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    rules = [(path, READ_ONLY) for path in read_only]
    rules += [(path, READ_WRITE_FILE) for path in read_write_files]
    return Plan(abi, handled_fs(abi), handled_net, scoped, tuple(rules))


def enforce(plan: Plan, read_write_dirs: list[str], read_only_extra: list[str]) -> int:
    """Restrict this process (and its future children). Returns the number of rules added.

    Paths that don't exist or that this uid cannot reach are skipped: they grant nothing.
    """
    attr = _RulesetAttr(plan.handled_fs, plan.handled_net, plan.scoped)
    size = 8 if plan.abi < 4 else 16 if plan.abi < 6 else 24
    ruleset = syscall(
        "landlock_create_ruleset", ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)
    )
    try:
        rules = list(plan.rules)
        rules += [(path, READ_ONLY) for path in read_only_extra]
        rules += [(path, plan.handled_fs) for path in read_write_dirs]
        added = sum(
            _add_path_rule(ruleset, path, access & plan.handled_fs) for path, access in rules
        )
        syscall("landlock_restrict_self", ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return added


def _add_path_rule(ruleset: int, path: str, access: int) -> int:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOTDIR, errno.ELOOP):
            return 0
        raise
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= FILE_RIGHTS
        rule = _PathBeneathAttr(access, fd)
        syscall(
            "landlock_add_rule",
            ctypes.c_int(ruleset),
            ctypes.c_int(_RULE_PATH_BENEATH),
            ctypes.byref(rule),
            ctypes.c_uint32(0),
        )
    finally:
        os.close(fd)
    return 1
