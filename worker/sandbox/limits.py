"""Memory layout tweaks and rlimits (soft == hard, so the worker cannot raise them again)."""

from __future__ import annotations

import resource
import threading

from fnd.protocol.sandbox_config import SandboxConfig
from fnd.worker.sandbox.libc import M_ARENA_MAX, mallopt


def shrink_memory_reservations(arena_max: int, stack_bytes: int) -> str:
    """Fewer malloc arenas and smaller thread stacks, so threads don't eat RLIMIT_DATA."""
    parts = []
    if arena_max and mallopt(M_ARENA_MAX, arena_max):
        parts.append(f"arenas={arena_max}")
    if stack_bytes:
        threading.stack_size(stack_bytes)
        parts.append(f"stack={stack_bytes}")
    return " ".join(parts) or "default"


def wanted_limits(s: SandboxConfig, own_uid: bool = True) -> list[tuple[str, int, int]]:
    """(name, resource, value) for every rlimit to set: no core files, and each configured
    limit (a setting of 0 means that limit is not set). RLIMIT_NPROC counts every process and
    thread of the uid, so it is only set when the worker has a uid of its own."""
    limits = [("core", resource.RLIMIT_CORE, 0)]
    optional = [
        ("nofile", resource.RLIMIT_NOFILE, s["nofile"]),
        ("fsize", resource.RLIMIT_FSIZE, s["fsize_bytes"]),
        ("nproc", resource.RLIMIT_NPROC, s["pids_max"] if own_uid else 0),
        ("data", resource.RLIMIT_DATA, s["data_bytes"]),
        ("cpu", resource.RLIMIT_CPU, s["cpu_seconds"]),
    ]
    limits += [(name, res, value) for name, res, value in optional if value > 0]
    return limits


def apply_rlimits(s: SandboxConfig, own_uid: bool = True) -> str:
    """Set each limit with soft == hard. Without CAP_SYS_RESOURCE a hard limit can only go
    down, so a wanted value above the current hard limit becomes that hard limit."""
    parts = []
    for name, res, value in wanted_limits(s, own_uid):
        hard = resource.getrlimit(res)[1]
        if hard != resource.RLIM_INFINITY and value > hard:
            value = hard
        resource.setrlimit(res, (value, value))
        parts.append(f"{name}={value}")
    if not own_uid and s["pids_max"]:
        parts.append("nproc=n/a (uid shared with the daemon)")
    return " ".join(parts)
