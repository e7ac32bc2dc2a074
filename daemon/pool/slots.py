"""Worker slots: which are free, which are still being killed, which are kept out of use.

A slot is a worker's uid and cgroup. Slots are `uid_base` + 0 .. `cap` - 1 (2 × workers_max:
room for a full pool and as many workers still dying). A slot is reused only once its cgroup
is empty; one that does not empty after its kill is quarantined, then killed and checked again
at every sweep (docs/pool.md#sizing).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from fnd.daemon.logs import get_logger
from fnd.daemon.pool.spawner import Spawner

_log = get_logger("fnd.pool")
EXIT_STATUS_WAIT = 2.0  # how long a slot kill waits for its worker's exit status


class Slots:
    def __init__(self, loop: asyncio.AbstractEventLoop, spawner: Spawner, cap: int,
                 on_freed: Callable[[], None]) -> None:
        self.cap = cap
        self._loop = loop
        self._spawner = spawner
        self._on_freed = on_freed  # a slot came back into use: the pool may fork into it
        self.quarantined: set[int] = set()  # freed slots whose cgroup would not empty
        self._free: list[int] = []
        self._next = 0
        self._kills: dict[int, asyncio.Future[None]] = {}
        # A reload's workers waiting for a slot: a freed slot goes to them before a top-up.
        self._waiters: deque[asyncio.Future[int]] = deque()

    def take(self) -> int | None:
        if self._free:
            # The longest-free slot: its last cgroup kill has most likely finished.
            return self._free.pop(0)
        if self._next >= self.cap:
            return None  # every slot is in use or still dying: wait for one to empty
        # A new slot (its own uid and cgroup): only when every known slot is in use, so the
        # count tracks the most workers ever alive at once, dying ones included.
        self._next += 1
        return self._next - 1

    async def take_waiting(self, timeout: float) -> int | None:
        """A slot now, else the first one freed within `timeout` seconds (None: none was).

        For a reload's preflight and new generation: with a small pool every slot may be
        held by live or dying workers, and one comes free once a dying worker is reaped.
        """
        slot = self.take()
        if slot is not None or timeout <= 0:
            return slot
        waiter: asyncio.Future[int] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait([waiter], timeout=timeout)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give_back(waiter.result())  # handed over as this task was cancelled
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
                self._waiters.remove(waiter)
        return None if waiter.cancelled() else waiter.result()

    def stop_waiting(self) -> None:
        """Every waiting take gets None now (the daemon is stopping)."""
        while self._waiters:
            self._waiters.popleft().cancel()

    def spare(self) -> int:
        return len(self._free) + self.cap - self._next

    def kill_pending(self, slot: int) -> asyncio.Future[None] | None:
        """The slot's last kill, if any: a new worker waits for it before it is forked."""
        return self._kills.get(slot)

    def kill_soon(self, slot: int, exit_status: asyncio.Future[int],
                  release: bool = False) -> None:
        # What the worker started outside its process group dies with the slot's cgroup, once
        # the worker itself is reaped. Usually nothing is left then, and the cgroup v1 freezer
        # (a few ms of polling and an IPI to every CPU) is skipped. One kill at a time per
        # slot, and the slot is not reused before the last one is done: a late kill would hit
        # the next worker.
        previous = self._kills.get(slot)
        self._kills[slot] = asyncio.ensure_future(
            self._kill_after(previous, slot, exit_status, release))

    async def _kill_after(self, previous: asyncio.Future[None] | None, slot: int,
                          exit_status: asyncio.Future[int], release: bool) -> None:
        if previous is not None:
            await previous
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(exit_status), EXIT_STATUS_WAIT)
        if not (exit_status.done() and self._spawner.slot_empty(slot)):
            await self._loop.run_in_executor(None, self._kill_quietly, slot)
        if release:
            self._return(slot)

    def _return(self, slot: int) -> None:
        """A slot is reused only once nothing is left in its cgroup (so under its uid), and
        then without the System V objects its uid left (they outlive processes)."""
        if self._spawner.slot_empty(slot):
            self._spawner.remove_ipc(slot)
            self.quarantined.discard(slot)
            self.give_back(slot)
        elif slot not in self.quarantined:
            self.quarantined.add(slot)
            _log.error("worker slot not empty after its kill; kept out of use", slot=slot)

    def give_back(self, slot: int) -> None:
        """An empty slot: to the longest waiting take, else back to the free list."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._free.append(slot)
        self._on_freed()

    def _kill_quietly(self, slot: int) -> None:
        try:
            self._spawner.kill_slot(slot)
        except Exception as exc:  # a thread's error would otherwise go unseen
            _log.error("cannot kill the slot's cgroup", slot=slot, reason=str(exc))

    def sweep(self) -> None:
        """Kill and check again every quarantined slot whose last kill is over."""
        for slot in list(self.quarantined):
            if slot not in self._kills or self._kills[slot].done():
                self._kills[slot] = asyncio.ensure_future(self._kill_quarantined(slot))

    async def _kill_quarantined(self, slot: int) -> None:
        await self._loop.run_in_executor(None, self._kill_quietly, slot)
        self._return(slot)
