"""Per-slot cgroups for workers, made and watched by the daemon (as root).

One parent group ``fnd-<daemon pid>`` under the daemon's own cgroup, and one child group
``slot-N`` per worker slot with the memory and pids limits. The worker joins its slot's
group(s) itself, right after fork and while still root (worker/sandbox/__init__.py); the
daemon uses the groups to kill everything a worker left behind (``kill_slot``: children can
setsid away from the worker's process group), to tell an OOM kill from a crash
(``oom_killed``), to name the counter files SlotProbe reads (``counter_path``), and removes
them at shutdown (``cleanup``).

Two layouts are supported and detected, never assumed:
  v1  memory and pids hierarchies (freezer and cpuacct used when mounted): one dir per
      controller per slot; memory.limit_in_bytes (+ memsw), pids.max; kill = freeze, SIGKILL
      every pid, thaw; OOM from memory.oom_control's oom_kill counter.
  v2  a delegated unified hierarchy with memory and pids available (systemd Delegate=yes):
      one dir per slot; memory.max, memory.swap.max 0, memory.oom.group 1, pids.max;
      kill = cgroup.kill; OOM from memory.events. The daemon first moves itself into a leaf
      ``fnd-daemon`` group, because a v2 group with processes cannot enable controllers.

Usage::

    cg = Cgroups.create(memory_bytes=256 << 20, pids_max=64)
    settings["cgroup_dirs"] = cg.slot_dirs(slot)       # or cg.dir_templates() ("{slot}")
    ...
    cg.kill_slot(slot); died_of_oom = cg.oom_killed(slot)
    cg.cleanup()
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from dataclasses import dataclass, field

V1_REQUIRED = ("memory", "pids")
V1_OPTIONAL = ("freezer", "cpuacct")
# fnd-<pid>-<pid namespace inode> (fnd-<pid> from older daemons).
_STALE = re.compile(r"fnd-(\d+)(?:-(\d+))?")
_POLL = 0.001


class CgroupError(Exception):
    """No usable cgroup hierarchy, or a group could not be made; the message says why."""


@dataclass(frozen=True)
class Layout:
    version: str  # "v1" | "v2"
    bases: dict[str, str]  # v1: controller -> our own dir in its hierarchy; v2: {"unified": dir}


def _parse_mountinfo(text: str) -> list[tuple[str, str, str, set[str]]]:
    """(mount point, mount root, fs type, super options) of every cgroup mount."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        point = fields[4].replace("\\040", " ")
        mounts.append((point, fields[3], tail[0], set(tail[2].split(","))))
    return mounts


def _parse_proc_cgroup(text: str) -> dict[str, str]:
    """controller -> cgroup path; the v2 entry is under the key ""."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(","):
            paths[controller] = parts[2]
    return paths


def _join(point: str, root: str, path: str) -> str:
    rel = path[len(root) :] if root != "/" and path.startswith(root) else path
    return os.path.normpath(point + "/" + rel.lstrip("/"))


def detect(
    mountinfo: str = "/proc/self/mountinfo", proc_cgroup: str = "/proc/self/cgroup"
) -> Layout:
    """Find a usable layout for this process; raise CgroupError explaining what is missing."""
    with open(mountinfo) as f:
        mounts = _parse_mountinfo(f.read())
    with open(proc_cgroup) as f:
        own = _parse_proc_cgroup(f.read())
    reasons = []
    for point, root, fstype, _opts in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        directory = _join(point, root, own[""])
        available = set(_read(os.path.join(directory, "cgroup.controllers"), "").split())
        if not {"memory", "pids"} <= available:
            reasons.append(f"v2 at {point} lacks memory/pids (has {' '.join(available) or '-'})")
        elif not os.access(directory, os.W_OK):
            reasons.append(f"v2 group {directory} is not writable (no delegation)")
        else:
            return Layout("v2", {"unified": directory})
    bases: dict[str, str] = {}
    for controller in (*V1_REQUIRED, *V1_OPTIONAL):
        for point, root, fstype, opts in mounts:
            if fstype == "cgroup" and controller in opts and controller in own:
                directory = _join(point, root, own[controller])
                if os.access(directory, os.W_OK):
                    bases[controller] = directory
                    break
    missing = [c for c in V1_REQUIRED if c not in bases]
    if not missing:
        return Layout("v1", bases)
    reasons.append(f"v1 {'/'.join(missing)} hierarchy missing or not writable")
    raise CgroupError("no usable cgroup hierarchy: " + "; ".join(reasons))


def _read(path: str, default: str | None = None) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        if default is None:
            raise
        return default


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _counter(text: str, key: str) -> int | None:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def _pids(directory: str) -> list[int]:
    return [int(p) for p in _read(os.path.join(directory, "cgroup.procs"), "").split()]


@dataclass
class Cgroups:
    layout: Layout
    memory_bytes: int
    pids_max: int
    name: str = field(default_factory=lambda: f"fnd-{os.getpid()}-{_pid_namespace()}")
    _slots: dict[int, dict[str, str]] = field(default_factory=dict)
    _oom_seen: dict[int, int] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        memory_bytes: int,
        pids_max: int,
        name: str | None = None,
        layout: Layout | None = None,
    ) -> Cgroups:
        """Detect the layout and make the parent group(s). Raises CgroupError."""
        cg = cls(layout or detect(), memory_bytes, pids_max)
        if name:
            cg.name = name
        cg.sweep_stale()
        try:
            if cg.layout.version == "v2":
                cg._prepare_v2()
            for directory in cg._parents().values():
                os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise CgroupError(f"cannot make cgroup {cg.name}: {exc}") from exc
        return cg

    def describe(self) -> str:
        if self.layout.version == "v2":
            return "v2 memory+pids"
        return "v1 " + "+".join(self.layout.bases)

    # -- groups -----------------------------------------------------------------------------

    def _parents(self) -> dict[str, str]:
        parents: dict[str, str] = {}
        for controller, base in self.layout.bases.items():
            parents[controller] = os.path.join(base, self.name)
        return parents

    def _prepare_v2(self) -> None:
        base = self.layout.bases["unified"]
        if _pids(base):
            leaf = os.path.join(base, "fnd-daemon")
            os.makedirs(leaf, exist_ok=True)
            for pid in _pids(base):
                with contextlib.suppress(ProcessLookupError, OSError):
                    _write(os.path.join(leaf, "cgroup.procs"), str(pid))
        _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
        parent = os.path.join(base, self.name)
        os.makedirs(parent, exist_ok=True)
        _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")

    def _slot(self, slot: int) -> dict[str, str]:
        return {c: os.path.join(p, f"slot-{slot}") for c, p in self._parents().items()}

    def slot_dirs(self, slot: int) -> list[str]:
        """The dirs worker ``slot`` joins (made with their limits on first use)."""
        if slot not in self._slots:
            dirs = self._slot(slot)
            try:
                for controller, directory in dirs.items():
                    os.makedirs(directory, exist_ok=True)
                    self._set_limits(controller, directory)
            except OSError as exc:
                raise CgroupError(f"cannot make cgroup for slot {slot}: {exc}") from exc
            self._slots[slot] = dirs
            self._oom_seen[slot] = self.oom_kills(slot)
        return list(self._slots[slot].values())

    def dir_templates(self) -> list[str]:
        """Like slot_dirs, with "{slot}" for the slot number (sandbox setting cgroup_dirs)."""
        return [os.path.join(p, "slot-{slot}") for p in self._parents().values()]

    def _set_limits(self, controller: str, directory: str) -> None:
        limit = str(self.memory_bytes) if self.memory_bytes else "max"
        pids = str(self.pids_max) if self.pids_max else "max"
        if controller == "unified":
            _write(os.path.join(directory, "memory.max"), limit)
            swap = os.path.join(directory, "memory.swap.max")
            if os.path.exists(swap):
                _write(swap, "0")
            _write(os.path.join(directory, "memory.oom.group"), "1")
            _write(os.path.join(directory, "pids.max"), pids)
        elif controller == "memory":
            value = str(self.memory_bytes) if self.memory_bytes else "-1"
            _write(os.path.join(directory, "memory.limit_in_bytes"), value)
            memsw = os.path.join(directory, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                _write(memsw, value)
        elif controller == "pids":
            _write(os.path.join(directory, "pids.max"), pids)

    def _dir(self, slot: int, controller: str) -> str | None:
        dirs = self._slots.get(slot) or self._slot(slot)
        return dirs.get(controller)

    def _procs_dir(self, slot: int) -> str:
        for controller in ("unified", "freezer", "pids", "memory"):
            directory = self._dir(slot, controller)
            if directory:
                return directory
        raise CgroupError(f"no cgroup for slot {slot}")

    # -- watching and killing ---------------------------------------------------------------

    def pids(self, slot: int) -> list[int]:
        return _pids(self._procs_dir(slot))

    def kill_slot(self, slot: int, timeout: float = 1.0) -> int:
        """SIGKILL every process in the slot's cgroup. Returns how many were signalled."""
        if not self.pids(slot):
            return 0  # an empty cgroup stays empty (only its members can fork into it)
        unified = self._dir(slot, "unified")
        if unified:
            before = len(_pids(unified))
            kill_file = os.path.join(unified, "cgroup.kill")
            if os.path.exists(kill_file):
                with contextlib.suppress(FileNotFoundError):
                    _write(kill_file, "1")
                return before
            return self._freeze_and_kill(unified, "cgroup.freeze", ("1", "0"), timeout)
        freezer = self._dir(slot, "freezer")
        if freezer and os.path.isdir(freezer):
            return self._freeze_and_kill(freezer, "freezer.state", ("FROZEN", "THAWED"), timeout)
        return self._kill_rounds(self._procs_dir(slot), timeout)

    def _freeze_and_kill(
        self, directory: str, state_file: str, values: tuple[str, str], timeout: float
    ) -> int:
        state = os.path.join(directory, state_file)
        try:
            _write(state, values[0])
        except FileNotFoundError:
            return 0
        deadline = time.monotonic() + timeout
        while state_file == "freezer.state" and time.monotonic() < deadline:
            if _read(state, "").strip() != "FREEZING":
                break
            time.sleep(_POLL)
        try:
            return self._kill_rounds(directory, timeout)
        finally:
            with contextlib.suppress(FileNotFoundError):
                _write(state, values[1])

    @staticmethod
    def _kill_rounds(directory: str, timeout: float) -> int:
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while True:
            pending = [p for p in _pids(directory) if p not in killed]
            for pid in pending:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            if not pending or time.monotonic() >= deadline:
                return len(killed)
            time.sleep(_POLL)

    def pids_current(self, slot: int) -> int:
        """Tasks charged to the slot's pids controller (threads and unreaped zombies too)."""
        directory = self._dir(slot, "unified") or self._dir(slot, "pids")
        text = _read(os.path.join(directory, "pids.current"), "") if directory else ""
        return int(text) if text.strip().isdigit() else 0

    def counter_path(self, slot: int, name: str) -> str | None:
        """The file behind a SlotProbe counter: "tasks" (pids.current) or "cpu"."""
        unified = self._dir(slot, "unified")
        if name == "tasks":
            directory = unified or self._dir(slot, "pids")
            return os.path.join(directory, "pids.current") if directory else None
        if unified:
            return os.path.join(unified, "cpu.stat")
        cpuacct = self._dir(slot, "cpuacct")
        return os.path.join(cpuacct, "cpuacct.usage") if cpuacct else None

    def oom_kills(self, slot: int) -> int:
        """How many processes the kernel OOM-killed in this slot's cgroup, ever."""
        unified = self._dir(slot, "unified")
        if unified:
            return _counter(_read(os.path.join(unified, "memory.events"), ""), "oom_kill") or 0
        memory = self._dir(slot, "memory")
        if not memory:
            return 0
        control = _read(os.path.join(memory, "memory.oom_control"), "")
        count = _counter(control, "oom_kill")
        if count is None:  # kernels before 4.13: a hit of the limit is the best we have
            count = int(_read(os.path.join(memory, "memory.failcnt"), "0").strip() or 0)
        return count

    def oom_killed(self, slot: int) -> bool:
        """True if an OOM kill happened in the slot since the previous call (or creation)."""
        count = self.oom_kills(slot)
        seen = self._oom_seen.get(slot, 0)
        self._oom_seen[slot] = count
        return count > seen

    # -- teardown ---------------------------------------------------------------------------

    def cleanup(self, timeout: float = 5.0) -> list[str]:
        """Kill what is left and remove every group; returns the dirs that could not go."""
        deadline = time.monotonic() + timeout
        left: list[str] = []
        for slot in sorted(self._slots):
            if self.pids(slot):
                self.kill_slot(slot)
            for directory in self._slots[slot].values():
                if not _rmdir(directory, deadline):
                    left.append(directory)
        self._slots.clear()
        for directory in self._parents().values():
            if not _rmdir(directory, deadline):
                left.append(directory)
        return left

    def sweep_stale(self) -> list[str]:
        """Remove groups left by daemons that are gone (fnd-<pid> with no such process)."""
        removed = []
        for base in self.layout.bases.values():
            try:
                names = os.listdir(base)
            except OSError:
                continue
            for name in names:
                match = _STALE.fullmatch(name)
                if not match or name == self.name or os.path.exists(f"/proc/{match[1]}"):
                    continue
                if match[2] is not None and int(match[2]) != _pid_namespace():
                    # A daemon of another pid namespace (a container sharing this hierarchy,
                    # fnd as PID 1): its pid means nothing here, so its groups are not ours
                    # to judge, let alone kill.
                    continue
                parent = os.path.join(base, name)
                for child in _subdirs(parent):
                    Cgroups._kill_rounds(child, 0.5)
                    _rmdir(child, time.monotonic() + 1.0)
                if _rmdir(parent, time.monotonic() + 1.0):
                    removed.append(parent)
        return removed


def _pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _subdirs(directory: str) -> list[str]:
    try:
        return [e.path for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _rmdir(directory: str, deadline: float) -> bool:
    """rmdir a cgroup, retrying while its last processes finish dying (bounded)."""
    while True:
        try:
            os.rmdir(directory)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.EAGAIN) or time.monotonic() >= deadline:
                return False
            for pid in _pids(directory):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
