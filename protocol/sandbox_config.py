"""The sandbox configuration both sides share: the daemon fills it in, the worker applies it.

The daemon puts one :class:`SandboxConfig` map in ``WorkerConfig["sandbox"]``, made by
:func:`resolve` from the keys it sets; every other key gets its default there, once.

Keys:
  mode                "strict" (a layer that cannot be applied fails the worker) or
                      "permissive" (the layer is reported as "off: reason" and the worker runs)
  uid_base            each slot runs as uid = gid = uid_base + slot (no passwd entry needed)
  memory_bytes        the slot's cgroup memory limit; 0 = none (default 256 MiB)
  data_bytes          RLIMIT_DATA; 0 = derived: a little below memory_bytes, so a runaway
                      allocation is a catchable MemoryError before the cgroup OOM-kills
  pids_max            the slot's cgroup pids.max and RLIMIT_NPROC (processes + threads)
  nofile              RLIMIT_NOFILE
  fsize_bytes         RLIMIT_FSIZE (a longer write fails with EFBIG)
  cpu_seconds         RLIMIT_CPU: the worker's lifetime CPU budget; 0 = none
  thread_stack_bytes  threading.stack_size() for threads started by the worker
  malloc_arena_max    mallopt(M_ARENA_MAX); keeps per-thread malloc arenas from eating RLIMIT_DATA
  network             False: no AF_INET/AF_INET6 sockets (seccomp) and no TCP (Landlock)
  tcp_bind            allow bind/listen (seccomp) and TCP binding (Landlock); off by default
                      and never set by the daemon: a function is not a server. Connecting is
                      always allowed when network is True
  project_dir         the project; only its functions/ and assets/ are readable, so .env and
                      fnd.toml are not
  scratch_root        the worker's writable dir is scratch_root/slot-N (recreated per worker,
                      owned by the slot's uid, mode 0700); also the worker's TMPDIR
  scratch_bytes       the size of the tmpfs the daemon mounts on each slot's scratch dir; the
                      worker checks that its scratch is such a mount, no larger; 0 = no limit
  readable_paths      extra read-only paths on top of the interpreter, venv, /usr and /etc
  hidden_paths        paths never readable even when under a readable path (project_dir and
                      scratch_root are always hidden except for what is granted explicitly)
  cgroup_dirs         the worker's own cgroup dirs, made by daemon/sandbox/cgroups.py; "{slot}" in
                      an entry is replaced by the slot number
  accounting          "cgroup", or "uid": no cgroup could be written, the daemon accounts the
                      slot by its uid (daemon/sandbox/uid_accounting.py) and the worker's
                      rlimits (NPROC, DATA) are its bounds

The worker answers with a report ``{layer: value}``: "on", a detail such as "abi 7" or
"61003", "off: reason" for a layer that should be there and is not, or "n/a: reason" for a
layer that does not apply (e.g. no uid change when the daemon does not run as root).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Literal, TypedDict

MiB = 1024 * 1024

LAYERS = (
    "cgroup",
    "scratch",
    "scratch_limit",
    "fds",
    "signals",
    "malloc",
    "rlimits",
    "uid",
    "pdeathsig",
    "not_dumpable",
    "no_new_privs",
    "landlock",
    "seccomp",
    "network",
)


class SandboxConfig(TypedDict):
    mode: Literal["strict", "permissive"]
    uid_base: int
    memory_bytes: int
    data_bytes: int
    pids_max: int
    nofile: int
    fsize_bytes: int
    cpu_seconds: int
    thread_stack_bytes: int
    malloc_arena_max: int
    network: bool
    tcp_bind: bool
    project_dir: str
    scratch_root: str
    scratch_bytes: int
    readable_paths: list[str]
    hidden_paths: list[str]
    cgroup_dirs: list[str]
    accounting: Literal["cgroup", "uid"]


def default_data_bytes(memory_bytes: int) -> int:
    """RLIMIT_DATA a little below the cgroup limit (0 when there is no memory limit)."""
    if memory_bytes <= 0:
        return 0
    return max(memory_bytes - max(16 * MiB, memory_bytes // 16), memory_bytes // 2)


def default_scratch_root() -> str:
    """Root-owned ``$TMPDIR/fnd-scratch`` for a root daemon, a per-user dir otherwise."""
    euid = os.geteuid()
    name = "fnd-scratch" if euid == 0 else f"fnd-scratch-{euid}"
    return os.path.join(tempfile.gettempdir(), name)


def resolve(settings: Mapping[str, object]) -> SandboxConfig:
    """Fill in every default; raise ValueError on a value of the wrong kind."""
    s = dict(settings)
    known = set(SandboxConfig.__annotations__)
    unknown = sorted(set(s) - known)
    if unknown:
        raise ValueError(f"unknown sandbox setting(s): {', '.join(unknown)}")
    if s.get("accounting", "cgroup") not in ("cgroup", "uid"):
        raise ValueError(f"sandbox accounting must be 'cgroup' or 'uid', got {s['accounting']!r}")
    mode = s.get("mode", "strict")
    if mode not in ("strict", "permissive"):
        raise ValueError(f"sandbox mode must be 'strict' or 'permissive', got {mode!r}")
    memory = _int(s, "memory_bytes", 256 * MiB)
    resolved: SandboxConfig = {
        "mode": "strict" if mode == "strict" else "permissive",
        "uid_base": _int(s, "uid_base", 61000),
        "memory_bytes": memory,
        "data_bytes": _int(s, "data_bytes", 0) or default_data_bytes(memory),
        "pids_max": _int(s, "pids_max", 64),
        "nofile": _int(s, "nofile", 256),
        "fsize_bytes": _int(s, "fsize_bytes", 64 * MiB),
        "cpu_seconds": _int(s, "cpu_seconds", 3600),
        "thread_stack_bytes": _int(s, "thread_stack_bytes", 1 * MiB),
        "malloc_arena_max": _int(s, "malloc_arena_max", 2),
        "network": bool(s.get("network", True)),
        "tcp_bind": bool(s.get("tcp_bind", False)),
        "project_dir": str(s.get("project_dir", "")),
        "scratch_root": str(s.get("scratch_root", default_scratch_root())),
        "scratch_bytes": _int(s, "scratch_bytes", 0),
        "readable_paths": _strs(s, "readable_paths"),
        "hidden_paths": _strs(s, "hidden_paths"),
        "cgroup_dirs": _strs(s, "cgroup_dirs"),
        "accounting": "uid" if s.get("accounting", "cgroup") == "uid" else "cgroup",
    }
    return resolved


def missing_layers(report: dict[str, str]) -> list[str]:
    """Layers a worker reported as "off" (or did not report at all)."""
    missing = [name for name in LAYERS if name not in report]
    missing += [name for name, value in report.items() if value.startswith("off")]
    return missing


def _int(s: dict[str, object], key: str, default: int) -> int:
    value = s.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"sandbox setting {key} must be a non-negative integer, got {value!r}")
    return value


def _strs(s: dict[str, object], key: str) -> list[str]:
    value = s.get(key, [])
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"sandbox setting {key} must be a list of paths, got {value!r}")
    return [str(v) for v in value]
