"""The interface under the pool: everything it asks of processes, the zygote and the slots' cgroups.

The pool decides; a `Spawner` carries the decisions out. `ZygoteSpawner` is the real one (the
zygote channel, the sandbox's cgroups and scratch, SIGKILL); the pool's unit tests use an
in-memory one (tests/daemon/fake_spawner.py) whose workers are pipes played by the test.
What happens to a worker comes back through `SpawnEvents`.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Protocol

from fnd.daemon.pool.zygote_client import SpawnedPipes, ZygoteClient
from fnd.daemon.sandbox.setup import SandboxSetup
from fnd.protocol import messages as m

_PF_EXITING = 0x4  # the kernel's flag for a task inside exit(), set before its fds close


class SpawnEvents(Protocol):
    """What the zygote side reports to the pool."""

    def on_spawned(self, slot: int, pid: int) -> None: ...
    def on_spawn_failed(self, slot: int, reason: str) -> None: ...
    def on_exited(self, pid: int, status: int) -> None: ...  # a wait status
    def on_zygote_lost(self, reason: str) -> None: ...


class Spawner(Protocol):
    """Start workers in slots, kill them and their slots, look into a slot from outside.

    Failures to start raise `ZygoteError`, `OSError` or `CgroupError` (the worker's
    failure reason).
    """

    @property
    def alive(self) -> bool: ...  # spawn orders can be sent
    @property
    def pid(self) -> int | None: ...  # the zygote's, for the status view
    async def start(self, config: m.WorkerConfig, events: SpawnEvents) -> None: ...
    async def configure(self, config: m.WorkerConfig) -> None: ...
    async def stop(self) -> None: ...
    async def spawn(self, slot: int) -> SpawnedPipes: ...  # prepares the slot, then forks
    def kill_group(self, pid: int) -> None: ...  # SIGKILL a worker's process group
    def running(self, pid: int) -> bool: ...  # exists and is not exiting
    def kill_slot(self, slot: int) -> None: ...  # blocking: the pool runs it in a thread
    def slot_empty(self, slot: int) -> bool: ...
    def remove_ipc(self, slot: int) -> None: ...  # the slot is empty: its SysV objects go
    def scratch_has_files(self, slot: int) -> bool: ...  # anything in the slot's scratch
    def oom_killed(self, slot: int) -> bool: ...
    def tasks(self, slot: int) -> int | None: ...  # None: not accounted on this host
    def cpu(self, slot: int) -> float | None: ...  # CPU seconds; None: not accounted


class ZygoteSpawner:
    """The real spawner: the zygote forks, the sandbox's cgroups and scratch hold the slots."""

    def __init__(self, sandbox: SandboxSetup | None = None) -> None:
        self._sandbox = sandbox
        self._probe = sandbox.probe() if sandbox is not None else None
        self._zygote: ZygoteClient | None = None

    @property
    def alive(self) -> bool:
        return self._zygote is not None and self._zygote.alive

    @property
    def pid(self) -> int | None:
        return self._zygote.pid if self._zygote is not None else None

    async def start(self, config: m.WorkerConfig, events: SpawnEvents) -> None:
        if self._zygote is None:
            self._zygote = ZygoteClient(
                on_spawned=events.on_spawned, on_spawn_failed=events.on_spawn_failed,
                on_exited=events.on_exited, on_lost=events.on_zygote_lost,
            )
        await self._zygote.start(config)

    async def configure(self, config: m.WorkerConfig) -> None:
        assert self._zygote is not None
        await self._zygote.configure(config)

    async def stop(self) -> None:
        if self._zygote is not None:
            await self._zygote.stop()

    async def spawn(self, slot: int) -> SpawnedPipes:
        assert self._zygote is not None
        if self._sandbox is not None:
            self._sandbox.prepare_slot(slot)
        return await self._zygote.spawn(slot)

    def kill_group(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def running(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            return fields[0] not in (b"Z", b"X") and not int(fields[6]) & _PF_EXITING
        except (OSError, IndexError, ValueError):
            return False

    def kill_slot(self, slot: int) -> None:
        if self._sandbox is not None:
            self._sandbox.kill_slot(slot)

    def slot_empty(self, slot: int) -> bool:
        return self._sandbox.slot_empty(slot) if self._sandbox is not None else True

    def remove_ipc(self, slot: int) -> None:
        if self._sandbox is not None:
            self._sandbox.remove_ipc(range(slot, slot + 1))

    def scratch_has_files(self, slot: int) -> bool:
        return self._sandbox.scratch_has_files(slot) if self._sandbox is not None else False

    def oom_killed(self, slot: int) -> bool:
        return self._sandbox.oom_killed(slot) if self._sandbox is not None else False

    def tasks(self, slot: int) -> int | None:
        return self._probe.tasks(slot) if self._probe is not None else None

    def cpu(self, slot: int) -> float | None:
        return self._probe.cpu(slot) if self._probe is not None else None
