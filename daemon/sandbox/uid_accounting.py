"""Uid accounting: a worker slot is every process running as the slot's uid.

Used by a root daemon in strict mode when no cgroup can be written (a Kubernetes pod, podman
without cgroup binds, cgroup v2 without delegation): docs/sandbox.md#uid-accounting. Each
slot's uid belongs to this daemon alone (daemon/sandbox/uid_claim.py), so "the processes of
uid U" is exactly what the slot's cgroup would hold. What the cgroups do, done by uid:

  kill_slot     a helper process running as the slot's uid sends kill(-1, SIGKILL) until
                nothing of the uid is left (uid_killer.py): setsid or re-parented children die;
                survivors (one may kill the helper first) are SIGKILLed through pidfds
  tasks / cpu   the outside checks (tasks left after DONE, CPU used while idle) read /proc
  pids          processes of the uid, zombies included, as cgroup.procs would list them

The process limit (RLIMIT_NPROC, per uid) and the memory limit (RLIMIT_DATA) are set by the
worker itself (worker/sandbox/limits.py). There is no OOM attribution: ``oom_killed`` is
always False.

/proc is scanned once per question: one stat() per process, and a read of its status only
for the slot's own processes and for root-owned ones not seen before (a worker is not
dumpable, so its /proc folder belongs to root). See ``scan`` for what is remembered.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from fnd.daemon.sandbox import uid_killer

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_POLL = 0.002
# cpu() right after tasks() (a worker verified clean going idle) reads the CPU of the
# processes that count found, not /proc again: a process started since is found by the next
# count, as the slot's next check is a count.
_REUSE = 0.01
Known = dict[int, tuple[int, int]]


@dataclass(frozen=True)
class Task:
    pid: int
    uid: int  # real uid
    threads: int
    zombie: bool


def scan(first: int, count: int, known: Known | None = None) -> list[Task]:
    """Every process whose real uid is in first .. first + count - 1.

    ``known`` (updated) maps pid -> (inode of /proc/PID, real uid) for processes whose uid
    cannot become one of the range: any uid but root's (only root changes uid), and root
    processes older than the daemon's workers. Those outside the range are skipped without
    a read; a new process under a reused pid has another inode."""
    found = []
    last = first + count - 1
    seen: Known = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            info = entry.stat()  # st_uid: the effective uid; root for a non-dumpable process
            if info.st_uid != 0 and not first <= info.st_uid <= last:
                continue
            cached = known.get(pid) if known is not None else None
            if cached is not None and cached[0] == info.st_ino:
                seen[pid] = cached
                if not first <= cached[1] <= last:
                    continue
            with open(f"/proc/{pid}/status", "rb") as f:
                text = f.read()
        except OSError:  # gone meanwhile
            continue
        task = _parse_status(pid, text)
        if task is None:
            continue
        if task.uid != 0:
            seen[pid] = (info.st_ino, task.uid)
        if first <= task.uid <= last:
            found.append(task)
    if known is not None:
        known.clear()
        known.update(seen)
    return found


def _known_now() -> Known:
    """pid -> (/proc inode, real uid) of every process that runs now as root or another
    uid, read before this daemon forks any worker: none of them can become one of ours."""
    found: Known = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            info = entry.stat()
            with open(f"/proc/{entry.name}/status", "rb") as f:
                task = _parse_status(int(entry.name), f.read())
        except OSError:
            continue
        if task is not None and not task.zombie:
            found[task.pid] = (info.st_ino, task.uid)
    return found


def _parse_status(pid: int, text: bytes) -> Task | None:
    uid = threads = -1
    zombie = False
    for line in text.splitlines():
        key, _, value = line.partition(b":")
        if key == b"State":
            zombie = value.split()[:1] in ([b"Z"], [b"X"])
        elif key == b"Uid":
            uid = int(value.split()[0])
        elif key == b"Threads":
            threads = int(value)
            break
    return Task(pid, uid, max(threads, 1), zombie) if uid >= 0 else None


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the process and of its reaped children (/proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / _CLK_TCK


class UidAccounting:
    """The slots of one daemon's held uid range, ``first`` + slot."""

    def __init__(self, first: int, count: int) -> None:
        self.first = first
        self.count = count
        self._known = _known_now()
        self._counted: dict[int, tuple[float, list[Task]]] = {}  # slot -> the last tasks()

    def _scan(self, slot: int) -> list[Task]:
        return scan(self.uid(slot), 1, self._known)

    def describe(self) -> str:
        return "uid"

    def uid(self, slot: int) -> int:
        return self.first + slot

    def pids(self, slot: int) -> list[int]:
        return [t.pid for t in self._scan(slot)]

    def tasks(self, slot: int) -> int | None:
        """Threads of every process of the slot, one per zombie (like pids.current)."""
        found = self._scan(slot)
        self._counted[slot] = (time.monotonic(), found)
        return sum(1 if t.zombie else t.threads for t in found)

    def cpu(self, slot: int) -> float | None:
        """CPU seconds of the slot's live processes and of the children they reaped. Unlike
        a cgroup's counter it forgets a process once it is gone: it is read across an idle
        spell, when nothing of the slot should start or end."""
        when, found = self._counted.get(slot, (0.0, []))
        if time.monotonic() - when > _REUSE:
            found = self._scan(slot)
        return sum(_cpu_seconds(t.pid) for t in found if not t.zombie)

    def kill_slot(self, slot: int, timeout: float = 2.0) -> int:
        """SIGKILL every process of the slot's uid; returns how many were alive."""
        alive = [t for t in self._scan(slot) if not t.zombie]
        if alive:
            kill_uid(self.uid(slot), timeout)
        return len(alive)

    def kill_all(self) -> int:
        """Kill every process of the range (leftovers of an earlier daemon, or at stop)."""
        uids = sorted({t.uid for t in scan(self.first, self.count, self._known)
                       if not t.zombie})
        for uid in uids:
            kill_uid(uid)
        return len(uids)

    def oom_killed(self, slot: int) -> bool:
        return False  # an RLIMIT_DATA failure is a MemoryError in the worker, not a kill

    def close(self) -> None:
        pass


def kill_uid(uid: int, timeout: float = 2.0) -> bool:
    """Run uid_killer.py as `uid` (and gid `uid`, no groups) until no live process of the
    uid is left; False if one still is at the deadline.

    A process of the uid may kill each helper first (it may signal its own uid too), so
    after every run the daemon also SIGKILLs the survivors it finds itself, through pidfds."""
    deadline = time.monotonic() + timeout
    while True:
        # user=/group= are applied in C between fork and exec: safe from a thread. On its
        # time-out subprocess.run kills it; a survivor is found below.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [sys.executable, "-I", "-S", uid_killer.__file__, str(uid)],
                user=uid, group=uid, extra_groups=[], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                cwd="/", timeout=max(deadline - time.monotonic(), 0.1), check=False)
        survivors = [t.pid for t in scan(uid, 1) if not t.zombie]
        if not survivors:
            return True
        for pid in survivors:
            _kill_if_uid(pid, uid)
        if time.monotonic() >= deadline:
            return not any(not t.zombie for t in scan(uid, 1))
        time.sleep(_POLL)


def _kill_if_uid(pid: int, uid: int) -> None:
    """SIGKILL `pid` if it still runs as `uid`: the pidfd pins the process, so a pid reused
    by another process between the check and the signal is never hit."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # gone
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            task = _parse_status(pid, f.read())
        if task is not None and task.uid == uid:
            # Read after the pidfd was opened: if that process has since died, the signal
            # fails (ESRCH) instead of reaching whoever took its pid.
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(fd)
