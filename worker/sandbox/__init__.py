"""The worker sandbox: ``prepare`` once in the zygote, ``apply`` in each freshly forked worker.

The zygote calls, in the forked child, ``os.setsid()`` and then ``apply(settings, slot,
keep_fds, prepared)``, which runs these steps in this order (docs/sandbox.md#the-layers says why):

  cgroup        join the slot's cgroups while still root      required when memory_bytes > 0,
                unless settings["accounting"] is "uid" (no cgroup could be written)
  scratch       recreate scratch_root/slot-N (0700, the slot's uid); TMPDIR and cwd point there
  scratch_limit the scratch dir is the daemon's tmpfs of at most scratch_bytes  required (root,
                scratch_bytes > 0)
  fds           close every fd but 0-2 and keep_fds           required
  signals       CPython's default dispositions, empty mask    required
  malloc        M_ARENA_MAX and threading.stack_size          best effort
  rlimits       CORE 0, NOFILE, FSIZE, NPROC, DATA, CPU; soft == hard   required
  uid           setgroups([]), setresgid/setresuid(uid_base + slot); setuid(0) must fail
  pdeathsig     SIGKILL when the zygote dies; exit now if it already has   best effort
  not_dumpable  PR_SET_DUMPABLE 0                             required
  no_new_privs  PR_SET_NO_NEW_PRIVS 1                         required
  landlock      read-only system/interpreter/functions/assets, read-write scratch, scoped
                signals and abstract sockets, TCP limits      required
  seccomp       the filter compiled by ``prepare``            required
  network       "allowed", or "blocked (...)" when settings["network"] is False

and returns the report ``{layer: value}`` (see protocol/sandbox_config.py for the values).
In strict mode a required layer that cannot be applied raises :class:`SandboxError`
("layer: reason"); in permissive mode it is reported as "off: reason" and the worker runs.
Without root the uid change is "n/a" and the cgroup is "n/a" unless the daemon gave one.

The caller must not rely on any fd outside keep_fds afterwards (Python objects that wrapped
closed fds must never be closed or garbage-collected in the worker), and must not have
threads (fork only from the zygote's main thread).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fnd.protocol.sandbox_config import SandboxConfig, resolve
from fnd.worker.sandbox import identity, landlock, limits, paths, process, seccomp

# Settings that change what prepare() builds; the others are read by apply() itself.
_PREPARE_KEYS = (
    "mode",
    "network",
    "tcp_bind",
    "project_dir",
    "scratch_root",
    "readable_paths",
    "hidden_paths",
)

__all__ = ["Prepared", "SandboxError", "apply", "prepare"]


class SandboxError(Exception):
    """A required layer could not be applied ("layer: reason"); the worker must not run."""


@dataclass
class Prepared:
    """Everything that is the same for every worker, built once before forking."""

    key: tuple[object, ...]
    seccomp: seccomp.Filter | None
    seccomp_error: str
    landlock: landlock.Plan | None
    landlock_error: str


def _key(s: SandboxConfig) -> tuple[object, ...]:
    values: dict[str, object] = dict(s)
    return tuple(repr(values[k]) for k in _PREPARE_KEYS)


def prepare(settings: Mapping[str, Any]) -> Prepared:
    """Compile the seccomp filter and plan the Landlock rules. Call once, before forking.

    In strict mode raises SandboxError when seccomp or Landlock is unusable on this host.
    """
    s = resolve(settings)
    flt: seccomp.Filter | None = None
    seccomp_error = ""
    try:
        flt = seccomp.build(s["network"], servers=s["tcp_bind"])
    except (ImportError, OSError, ValueError) as exc:
        seccomp_error = f"cannot build filter: {exc}"
    plan: landlock.Plan | None = None
    landlock_error = ""
    abi = landlock.abi_version()
    if abi:
        hidden = [*s["hidden_paths"], s["scratch_root"]]
        if s["project_dir"]:
            hidden.append(s["project_dir"])
        read_only = paths.readable(s["readable_paths"], hidden, s["project_dir"])
        plan = landlock.make_plan(
            abi,
            read_only + list(paths.DEVICES_READ_ONLY),
            list(paths.DEVICES_READ_WRITE),
            s["network"],
            s["tcp_bind"],
        )
    else:
        landlock_error = "kernel has no Landlock (needs Linux 5.13+ with lsm=landlock)"
    if s["mode"] == "strict":
        for name, error in (("seccomp", seccomp_error), ("landlock", landlock_error)):
            if error:
                raise SandboxError(f"{name}: {error}")
    return Prepared(_key(s), flt, seccomp_error, plan, landlock_error)


def apply(
    settings: Mapping[str, Any],
    slot: int,
    keep_fds: tuple[int, ...],
    prepared: Prepared | None = None,
    parent: int | None = None,
) -> dict[str, str]:
    """Sandbox the current (freshly forked, single-threaded) process; return the report.

    ``parent`` is the forking process's pid, recorded before the fork: the process to die with.
    """
    if parent is None:
        parent = os.getppid()
    s = resolve(settings)
    if prepared is None or prepared.key != _key(s):
        prepared = prepare(s)  # the zygote passes the one it made before forking
    run = _Runner(s["mode"] == "strict")
    is_root = os.geteuid() == 0
    uid = gid = s["uid_base"] + slot if is_root else None
    dirs = [d.replace("{slot}", str(slot)) for d in s["cgroup_dirs"]]

    if dirs:
        run.layer("cgroup", s["memory_bytes"] > 0, lambda: _join(dirs))
    elif not is_root:
        run.report["cgroup"] = "n/a: not running as root"
    elif s["memory_bytes"] == 0:
        run.report["cgroup"] = "n/a: no memory limit configured"
    elif s["accounting"] == "uid":
        # The rlimits below bound it; the daemon watches and kills the slot by its uid.
        run.report["cgroup"] = "n/a: uid accounting"
    else:
        run.layer("cgroup", True, _no_cgroup)
    scratch = run.layer("scratch", True, lambda: _scratch(s["scratch_root"], slot, uid, gid))
    if s["scratch_bytes"] == 0:
        run.report["scratch_limit"] = "n/a: no limit configured"
    elif not is_root:
        run.report["scratch_limit"] = "n/a: not running as root"
    else:
        run.layer("scratch_limit", True, lambda: _scratch_limit(scratch, s["scratch_bytes"]))
    run.layer("fds", True, lambda: f"on, kept {process.close_fds(keep_fds)}")
    run.layer("signals", True, lambda: _done(process.reset_signals))
    run.layer(
        "malloc",
        False,
        lambda: limits.shrink_memory_reservations(s["malloc_arena_max"], s["thread_stack_bytes"]),
    )
    run.layer("rlimits", True, lambda: limits.apply_rlimits(s, own_uid=uid is not None))
    if uid is not None and gid is not None:
        run.layer("uid", True, lambda: _drop(uid, gid))
    else:
        run.report["uid"] = f"n/a: not running as root (uid {os.geteuid()})"
    run.layer("pdeathsig", False, lambda: _pdeathsig(parent))
    run.layer("not_dumpable", True, lambda: _done(identity.not_dumpable))
    run.layer("no_new_privs", True, lambda: _done(identity.no_new_privs))
    run.layer("landlock", True, lambda: _landlock(prepared, scratch))
    run.layer("seccomp", True, lambda: _seccomp(prepared))
    if s["network"]:
        run.report["network"] = "allowed"
    elif run.report["seccomp"].startswith("off"):
        run.layer("network", True, _no_network_block)
    else:
        run.report["network"] = "blocked (no inet sockets)"
    return run.report


class _Runner:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.report: dict[str, str] = {}

    def layer(self, name: str, required: bool, step: Callable[[], str]) -> str:
        try:
            value = step()
        except Exception as exc:  # noqa: BLE001 - every failure is reported or fatal
            reason = str(exc) or type(exc).__name__
            if self.strict and required:
                raise SandboxError(f"{name}: {reason}") from exc
            self.report[name] = f"off: {reason}"
            return ""
        self.report[name] = value
        return value


def _done(step: Callable[[], None]) -> str:
    step()
    return "on"


def _join(dirs: list[str]) -> str:
    process.join_cgroups(dirs)
    return _describe_cgroups(dirs)


def _describe_cgroups(dirs: list[str]) -> str:
    if len(dirs) == 1 and os.path.exists(os.path.join(dirs[0], "cgroup.controllers")):
        return "v2"
    names = []
    for directory in dirs:
        rest = directory.split("/sys/fs/cgroup/", 1)[-1]
        names.append(rest.split("/", 1)[0] or directory)
    return "v1 " + "+".join(names)


def _no_cgroup() -> str:
    raise SandboxError("no per-worker cgroup given by the daemon (cgroup_dirs is empty)")


def _scratch(root: str, slot: int, uid: int | None, gid: int | None) -> str:
    path = process.make_scratch(root, slot, uid, gid)
    tempfile.tempdir = path
    os.environ["TMPDIR"] = path
    os.chdir(path)
    return path


def _scratch_limit(path: str, limit: int) -> str:
    """The daemon mounted a tmpfs of at most ``limit`` bytes on the scratch dir."""
    if not path:
        raise SandboxError("no scratch folder")
    if os.stat(path).st_dev == os.stat(os.path.dirname(path)).st_dev:
        raise SandboxError(f"{path} is not a size-limited mount")
    vfs = os.statvfs(path)
    size = vfs.f_blocks * vfs.f_frsize
    if size > limit:
        raise SandboxError(f"{path} holds {size} bytes, more than {limit}")
    return f"{size / (1024 * 1024):g} MiB"


def _drop(uid: int, gid: int) -> str:
    identity.drop_to(uid, gid)
    return str(uid)


def _pdeathsig(parent: int) -> str:
    if not identity.die_with_parent(parent):
        os._exit(1)  # the zygote died before we could ask to die with it
    return "on"


def _landlock(prepared: Prepared, scratch: str) -> str:
    if prepared.landlock is None:
        raise SandboxError(prepared.landlock_error)
    landlock.enforce(prepared.landlock, [scratch] if scratch else [], ["/proc/self"])
    return prepared.landlock.describe()


def _seccomp(prepared: Prepared) -> str:
    if prepared.seccomp is None:
        raise SandboxError(prepared.seccomp_error)
    prepared.seccomp.load()
    return "on"


def _no_network_block() -> str:
    raise SandboxError("network = false needs the seccomp layer")
