"""The seccomp filter: compiled to BPF once (in the zygote), loaded in each worker.

libseccomp (through ``pyseccomp``) builds the filter; the worker only hands the finished BPF
program to ``prctl(PR_SET_SECCOMP)``, so loading costs one syscall and no libseccomp work.
A denylist of syscalls, plus an allow-list of socket address families: ``socket`` and
``socketpair`` work for AF_UNIX (and AF_INET/AF_INET6 with network on) and nothing else.
System V IPC and POSIX message queues are denied (their objects outlive the worker), and so
are ``bind`` and ``listen``: a function is a request handler, not a server
(docs/sandbox.md#the-layers).
Refused calls fail with EPERM; ``clone3`` fails with ENOSYS so glibc falls back to ``clone``,
whose flags the filter can inspect. Another architecture's syscall ABI kills the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import os
import socket
from dataclasses import dataclass
from typing import Any

from fnd.worker.sandbox.libc import PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prctl

DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount",
    "umount2",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_by_handle_at",
    "name_to_handle_at",
    "fanotify_init",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "quotactl",
    "syslog",
    "vhangup",
    "lookup_dcookie",
)

# Kernel objects that are not processes: they outlive the worker and its slot, are charged to
# the slot's memory cgroup, and fill host-wide tables (docs/sandbox.md#system-v-ipc).
IPC_DENIED = (
    "shmget",
    "shmat",
    "shmctl",
    "shmdt",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "semget",
    "semop",
    "semtimedop",
    "semctl",
    "ipc",  # the multiplexer of i386, s390, ...; absent on x86_64 and aarch64
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
)

# No listening or bound sockets: outgoing connections and datagrams bind implicitly and keep
# working. Left out only when the settings ask for tcp_bind (never the daemon).
SERVER_DENIED = ("bind", "listen")

CLONE_NEW_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_LOW32 = 0xFFFFFFFF


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@dataclass
class Filter:
    """A compiled BPF program, kept alive in memory that every forked worker inherits."""

    program: ctypes.Array[ctypes.c_char]
    instructions: int
    skipped: tuple[str, ...]  # syscalls this architecture does not have

    def load(self) -> None:
        prog = _SockFprog(self.instructions, ctypes.addressof(self.program))
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))


def _library() -> Any:
    """pyseccomp (import name ``pyseccomp``), or the libseccomp binding named ``seccomp``."""
    for name in ("pyseccomp", "seccomp"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("no seccomp binding: pip install pyseccomp (needs libseccomp.so.2)")


def build(network: bool, servers: bool = False) -> Filter:
    """Compile the filter; ``servers`` lets the worker bind and listen. Raises
    ImportError/OSError when libseccomp is unusable."""
    sc = _library()
    flt = sc.SyscallFilter(sc.ALLOW)
    flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    if hasattr(sc.Attr, "API_SYSRAWRC"):
        # older libseccomp lacks it and reports kernel errors as ECANCELED
        with contextlib.suppress(OSError):
            flt.set_attr(sc.Attr.API_SYSRAWRC, 1)
    if hasattr(sc.Attr, "CTL_OPTIMIZE"):
        # A binary tree on the syscall number (libseccomp 2.5+): an ordinary syscall runs 15
        # instructions instead of walking the whole denylist (71 as a chain).
        with contextlib.suppress(OSError):
            flt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    eperm = sc.ERRNO(errno.EPERM)
    skipped: list[str] = []

    def rule(action: int, name: str, *args: Any) -> None:
        if sc.resolve_syscall(sc.Arch.NATIVE, name) < 0:
            if name not in skipped:
                skipped.append(name)
            return
        flt.add_rule(action, name, *args)

    for name in (*DENIED, *IPC_DENIED, *(() if servers else SERVER_DENIED)):
        rule(eperm, name)
    rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in CLONE_NEW_FLAGS:
        rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for request in (TIOCSTI, TIOCLINUX):
        rule(eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, _LOW32, request))
    for name, allowed in allowed_families(network).items():
        for refused in refused_family_args(sc, allowed):
            rule(eperm, name, refused)
    return _export(flt, tuple(skipped))


def allowed_families(network: bool) -> dict[str, tuple[int, ...]]:
    """The address families each socket-creating syscall may use; every other one is EPERM
    (vsock reaches the hypervisor, netlink/packet/xdp the host's network, alg/key/bluetooth/
    can/tipc... kernel code nobody's function needs)."""
    inet = INET_FAMILIES if network else ()
    # only AF_UNIX makes pairs (and AF_TIPC, which is not allowed anyway)
    return {"socket": (socket.AF_UNIX, *inet), "socketpair": (socket.AF_UNIX,)}


def refused_family_args(sc: Any, allowed: tuple[int, ...]) -> list[Any]:
    """Comparisons on arg0 that together match exactly the families not in ``allowed``.

    libseccomp cannot say "not one of these" in one rule (one comparison per argument, and no
    allow rule under an allow default), so the complement is spelled out: above the highest
    allowed family, plus each gap below it. The kernel reads the family as a 32-bit int, but
    the filter sees the whole 64-bit register: the "above" comparison is on all 64 bits
    (unsigned), so any value with a high bit set is refused whatever its low bits say, and
    the gaps are compared on the low 32 bits only.
    """
    top = max(allowed)
    args = [sc.Arg(0, sc.GT, top)]
    args += [sc.Arg(0, sc.MASKED_EQ, _LOW32, family)
             for family in range(top) if family not in allowed]
    return args


def _export(flt: Any, skipped: tuple[str, ...]) -> Filter:
    fd = os.memfd_create("fnd-seccomp", os.MFD_CLOEXEC)
    try:

        class _File:
            def fileno(self) -> int:
                return fd

        flt.export_bpf(_File())
        size = os.lseek(fd, 0, os.SEEK_CUR)
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while len(data) < size:
            chunk = os.read(fd, size - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if not data or len(data) % 8:
        raise OSError(errno.EINVAL, f"libseccomp exported a {len(data)} byte BPF program")
    return Filter(ctypes.create_string_buffer(data, len(data)), len(data) // 8, skipped)
