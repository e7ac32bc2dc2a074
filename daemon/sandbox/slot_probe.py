"""Look into a worker slot from outside: how many tasks its cgroup holds, how much CPU it used.

The daemon does not take a worker's word that it is clean or idle (docs/security.md): after
each call it reads the slot's task count (threads and processes, from the pids controller)
and its CPU counter. Both files stay open per slot and are read with one pread each, since
this runs on every request. This is the daemon's only reader of a slot's CPU counter.
"""

from __future__ import annotations

import contextlib
import os
from typing import Protocol

from fnd.daemon.sandbox.cgroups import Cgroups


class Probe(Protocol):
    """A slot's task count and CPU seconds, None where not accounted (SlotProbe from its
    cgroups; uid_accounting.UidAccounting from /proc)."""

    def tasks(self, slot: int) -> int | None: ...
    def cpu(self, slot: int) -> float | None: ...
    def close(self) -> None: ...


class SlotProbe:
    def __init__(self, cgroups: Cgroups) -> None:
        self._cgroups = cgroups
        self._fds: dict[tuple[int, str], int] = {}

    def _fd(self, slot: int, name: str) -> int | None:
        key = (slot, name)
        fd = self._fds.get(key)
        if fd is None:
            path = self._cgroups.counter_path(slot, name)
            if path is None:
                return None
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            self._fds[key] = fd
        return fd

    def _read(self, slot: int, name: str) -> bytes | None:
        fd = self._fd(slot, name)
        if fd is None:
            return None
        try:
            return os.pread(fd, 256, 0)
        except OSError:
            return None

    def tasks(self, slot: int) -> int | None:
        """Tasks (threads, processes, unreaped zombies) in the slot; None if not accounted."""
        text = self._read(slot, "tasks")
        return int(text) if text and text.strip().isdigit() else None

    def cpu(self, slot: int) -> float | None:
        """CPU seconds used in the slot since it was made; None if not accounted."""
        text = self._read(slot, "cpu")
        return parse_cpu(text) if text else None

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def parse_cpu(text: bytes) -> float | None:
    """CPU seconds from a slot's counter file: v2 ``cpu.stat`` (``usage_usec`` is its first
    line) or v1 ``cpuacct.usage`` (nanoseconds); None for anything else."""
    if text.startswith(b"usage_usec "):
        value = text[11:].partition(b"\n")[0]
        return int(value) / 1e6 if value.isdigit() else None
    value = text.strip()
    return int(value) / 1e9 if value.isdigit() else None
