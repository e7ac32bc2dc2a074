"""Worker processes from fork to reaping: spawning into slots, pids, exit statuses, deaths
and their log lines, the back-off after failed starts, the zygote's restarts.

`Pool` (daemon/pool/pool.py) builds on this with what workers are for: calls, the queue,
sizing and reloads. Here a call is touched only to answer the one a dying worker held
(docs/pool.md#deaths, docs/pool.md#the-zygote).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from fnd.daemon import calls
from fnd.daemon.calls import Call, text_outcome
from fnd.daemon.config import Config
from fnd.daemon.logs import get_logger
from fnd.daemon.pool import deaths
from fnd.daemon.pool.fork_worker import ForkingWorker
from fnd.daemon.pool.frame_check import Limits
from fnd.daemon.pool.sizing import Recycling, backoff
from fnd.daemon.pool.slots import EXIT_STATUS_WAIT, Slots
from fnd.daemon.pool.spawner import Spawner
from fnd.daemon.pool.worker_proc import DEAD, WorkerProc
from fnd.daemon.pool.zygote_client import ZygoteError
from fnd.daemon.sandbox.cgroups import CgroupError
from fnd.daemon.stats import Stats
from fnd.protocol import messages as m
from fnd.protocol.sandbox_config import missing_layers

_log = get_logger("fnd.pool")
_ZYGOTE_RESTARTS = 5  # consecutive failed zygote restarts before the daemon gives up
_ZYGOTE_BACKOFF = 0.2  # seconds before the second try of a zygote restart, doubling
# Workers failing to start one after another: back off, then give up (like gunicorn's
# boot-error exit) instead of forking in a tight loop.
_START_FAILURES = 10
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 2.0
_RETIRE_GRACE = 5.0  # a retired worker that has not exited after this long is killed


class PoolError(Exception):
    """The pool could not reach a serving state; the message says why."""


class FunctionsBroken(PoolError):
    """Some functions of a new generation cannot run; `problems` lists (route, reason)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        first = ": ".join(part for part in problems[0] if part)
        super().__init__(f"{len(problems)} function problem(s), first: {first}")
        self.problems = problems


class WorkerSupervisor:
    """The process half of the pool; `Pool` supplies `_top_up`, `_release` and
    `worker_done` (what a ready or finished worker does next)."""

    def __init__(
        self,
        config: Config,
        worker_config: m.WorkerConfig,
        stats: Stats,
        spawner: Spawner,
        on_fatal: Callable[[str], None],
    ) -> None:
        self.config = config
        self.worker_config = worker_config
        self.stats = stats
        # Looked up once: asyncio.get_running_loop() costs a getpid() syscall on 3.11.
        self._loop = asyncio.get_running_loop()
        self._on_fatal = on_fatal
        self.spawner = spawner  # processes, the zygote and the slots' cgroups
        self.limits = limits(config)
        self._slots = Slots(self._loop, spawner, 2 * config.workers_max, self._top_up_soon)
        self._top_up_due = False  # a top-up is scheduled (events schedule one, never nest it)
        self.workers: dict[int, WorkerProc] = {}  # by slot, dying ones too until reaped
        self._by_pid: dict[int, WorkerProc] = {}
        # Capacity: workers starting, idle or busy that are not leaving (current generation
        # and older ones still finishing a call).
        self._live: set[WorkerProc] = set()
        self._starting: set[WorkerProc] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._spawn_after = 0.0  # loop time before which no worker is forked (back-off)
        self._start_failures = 0
        self._zygote_failures = 0
        self._zygote_up = False
        self._started = False
        self.generation = 0
        self.closing = False

    # -- what Pool decides --------------------------------------------------------------
    def _top_up(self) -> None:
        raise NotImplementedError

    def _release(self, worker: WorkerProc) -> None:
        raise NotImplementedError

    def worker_done(self, worker: WorkerProc, call: Call, clean: bool, reason: str | None) -> None:
        raise NotImplementedError

    def _forget(self, worker: WorkerProc) -> None:
        """Take a worker out of every capacity count (it is leaving or gone)."""
        self._live.discard(worker)
        self._starting.discard(worker)

    def _top_up_soon(self) -> None:
        """A top-up from a worker's or a slot's event: run once that event is handled, so
        that a kill or a retire never forks inside the callback that reported it."""
        if not self._top_up_due:
            self._top_up_due = True
            self._loop.call_soon(self._scheduled_top_up)

    def _scheduled_top_up(self) -> None:
        self._top_up_due = False
        self._top_up()

    # -- spawning -----------------------------------------------------------------------
    def _spawn(self) -> WorkerProc | None:
        slot = self._slots.take()
        return None if slot is None else self._spawn_in(slot, False, None)

    async def _spawn_fresh(self, config: Config | None, deadline: float) -> WorkerProc | None:
        """A worker of the next generation, in a slot that may first have to come free (a
        dying worker's, once reaped); None if none does by `deadline` (loop time)."""
        slot = await self._slots.take_waiting(deadline - self._loop.time())
        if slot is None:
            return None
        if self.closing:  # it stopped while this waited: the slot goes back, unused
            self._slots.give_back(slot)
            return None
        return self._spawn_in(slot, True, config)

    def _spawn_in(self, slot: int, fresh: bool, config: Config | None) -> WorkerProc:
        cfg = config or self.config
        worker = ForkingWorker(self, slot, self.generation + 1 if fresh else self.generation,
                            Recycling.draw(cfg), cfg.max_output)
        self.workers[slot] = worker
        if not fresh:  # a reload's next generation counts once the reload switches to it
            self._live.add(worker)
            self._starting.add(worker)
        self._run(self._start_worker(worker))
        return worker

    async def _start_worker(self, worker: WorkerProc) -> None:
        try:
            pending = self._slots.kill_pending(worker.slot)
            if pending is not None:
                await pending  # the slot's previous occupants are gone before it is reused
            if worker.state == DEAD:  # killed while it waited: no process to make
                self._exited(worker, -1)
                return
            pipes = await self.spawner.spawn(worker.slot)
            await worker.attach(pipes)
        except (ZygoteError, OSError, CgroupError) as exc:
            worker.fail_start(f"spawn failed: {exc}")
            if worker.pid is None:
                self._exited(worker, -1)  # no process was made
            elif worker.state == DEAD:
                self._free_slot(worker)

    def _run(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- PoolEvents, called by WorkerProc -----------------------------------------------
    def worker_ready(self, worker: WorkerProc) -> None:
        self._starting.discard(worker)
        if worker.pid is not None:
            self._by_pid.setdefault(worker.pid, worker)  # READY came before SPAWNED
        if worker.leaving:
            return
        missing = missing_layers(worker.layers) if self.config.sandbox == "strict" else []
        if missing:
            # Fail closed: a worker without every protection never gets a call.
            details = ", ".join(f"{name} ({worker.layers.get(name, 'not reported')})"
                                for name in missing)
            worker.fail_start(f"sandbox layers missing: {details}")
            return
        self._start_failures = 0
        self._spawn_after = 0.0
        worker.went_idle(time.monotonic(), self.spawner.cpu(worker.slot))
        _log.info("worker ready", pid=worker.pid, slot=worker.slot, generation=worker.generation,
                  start_ms=round((worker.ready_at - worker.spawned_at) * 1000, 1))
        if worker.generation > self.generation:
            return  # a reload's new worker: held until the switch
        if worker.generation < self.generation:
            worker.retire(deaths.RELOAD)
        else:
            self._release(worker)

    def worker_leaving(self, worker: WorkerProc) -> None:
        self._forget(worker)
        if worker.retiring:
            # An idle worker exits on EOF at once; one that does not is made to.
            self._loop.call_later(_RETIRE_GRACE, self._kill_lingering, worker)
        self._top_up_soon()

    def _kill_lingering(self, worker: WorkerProc) -> None:
        if worker.state != DEAD:
            worker.kill("did not exit after it was retired", worker.cause or deaths.STOPPING)

    def worker_gone(self, worker: WorkerProc) -> None:
        self._forget(worker)
        call = worker.take_call()
        if worker.cause is None:
            self._run(self._report_death(worker, call))  # waits for the exit status
        else:
            reason = worker.kill_reason or worker.cause
            self._record_exit(worker, worker.cause, reason)
            if call is not None:
                # No-op when already answered (504 at the deadline, a result before a kill).
                call.resolve(text_outcome(502, calls.CRASH, f"function crashed: {reason}"))
                self._finalize(call)
        if worker.exit_status.done():
            self._free_slot(worker)
        self._top_up_soon()

    def kill_worker(self, worker: WorkerProc) -> None:
        if worker.pid is not None:
            self.spawner.kill_group(worker.pid)
        if self.workers.get(worker.slot) is worker:  # never a later occupant of its slot
            self._slots.kill_soon(worker.slot, worker.exit_status)

    def still_running(self, worker: WorkerProc) -> bool:
        return worker.pid is not None and self.spawner.running(worker.pid)

    # -- deaths -------------------------------------------------------------------------
    async def _report_death(self, worker: WorkerProc, call: Call | None) -> None:
        """A worker died on its own: classify it from its exit status, answer its call."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(worker.exit_status), EXIT_STATUS_WAIT)
        if worker.cause is not None:  # meanwhile explained: the zygote died and took it along
            cause, words = worker.cause, worker.kill_reason or worker.cause
        else:
            status = worker.exit_status.result() if worker.exit_status.done() else None
            cause, words = deaths.explain(
                status, self.spawner.oom_killed(worker.slot), closed_early=worker.closed_early,
                was_ready=bool(worker.ready_at), failure=worker.failure,
            )
            worker.died_of(cause)
        self._record_exit(worker, cause, words)
        if call is not None:
            call.resolve(text_outcome(502, calls.CRASH, f"function crashed: {words}"))
            self._finalize(call)

    def _record_exit(self, worker: WorkerProc, cause: str, reason: str) -> None:
        """One counter and one log line per worker that leaves."""
        if cause not in deaths.NOT_COUNTED:
            self.stats.worker_restart(cause)
        log = _log.warning if cause in deaths.UNPLANNED or cause == deaths.TIMEOUT else _log.info
        log("worker exited", pid=worker.pid, slot=worker.slot, cause=cause, reason=reason,
            served=worker.served, generation=worker.generation,
            age_s=round(time.monotonic() - worker.spawned_at, 3))
        if cause == deaths.START_FAILED:
            self._start_failed(worker, reason)

    def _start_failed(self, worker: WorkerProc, reason: str) -> None:
        if worker.generation > self.generation or self.closing or not (
            self._zygote_up and self.spawner.alive
        ):
            return  # a reload reports its own failure; a zygote restart is handled apart
        self._start_failures += 1
        if self._start_failures >= _START_FAILURES and self._started:
            self._on_fatal(f"workers cannot start ({self._start_failures} failures in a row, "
                           f"last: {reason})")
            return
        delay = backoff(self._start_failures, _BACKOFF_FIRST, _BACKOFF_MAX)
        self._spawn_after = self._loop.time() + delay

    def _finalize(self, call: Call) -> None:
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        call.complete()  # its log line

    def _finalize_after_next(self, call: Call) -> None:
        """_finalize, with the log line written after the callbacks already due on the loop.

        After a clean DONE those are, at one connection, the client's next request (sent
        the moment it had its answer) or the handler that writes this call's answer when
        RESULT and DONE came in one read: neither waits for the line. The deadline timer
        goes now, and the line keeps the time the call ended.
        """
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        self._loop.call_soon(call.complete, time.perf_counter())

    def _exited(self, worker: WorkerProc, status: int) -> None:
        """Its exit status is known (-1: no process, or nobody will report one); once it is
        also dead its slot is freed."""
        worker.set_exit_status(status)
        if worker.state == DEAD:
            self._free_slot(worker)

    def _free_slot(self, worker: WorkerProc) -> None:
        if self.workers.get(worker.slot) is not worker:
            return
        del self.workers[worker.slot]
        if worker.pid is not None and self._by_pid.get(worker.pid) is worker:
            del self._by_pid[worker.pid]
        worker.close_pipes()
        # Anything it left goes with its cgroup; the slot is free once that is empty.
        self._slots.kill_soon(worker.slot, worker.exit_status, release=True)

    # -- SpawnEvents, reported by the spawner -------------------------------------------
    def on_spawned(self, slot: int, pid: int) -> None:
        worker = self.workers.get(slot)
        if worker is None or worker.pid not in (None, pid):
            return
        self._by_pid[pid] = worker
        worker.spawned(pid)

    def on_spawn_failed(self, slot: int, reason: str) -> None:
        worker = self.workers.get(slot)
        if worker is not None and worker.pid is None:
            worker.set_exit_status(-1)  # first: its death frees the slot at once
            worker.fail_start(reason)
            if worker.state == DEAD:
                self._free_slot(worker)

    def on_exited(self, pid: int, status: int) -> None:
        worker = self._by_pid.get(pid)
        if worker is None:
            return  # an orphan the zygote reaped as subreaper
        self._exited(worker, status)

    def on_zygote_lost(self, reason: str) -> None:
        self._zygote_up = False
        if self.closing:
            return
        _log.error("zygote lost", reason=reason)
        self.stats.worker_restart(deaths.ZYGOTE)
        # Its workers die with it (PDEATHSIG); nobody will report their exit statuses.
        for worker in list(self.workers.values()):
            worker.kill("zygote died", deaths.ZYGOTE)
            self._exited(worker, -1)
        self._run(self._restart_zygote())

    async def _restart_zygote(self) -> None:
        await self.spawner.stop()
        while not self.closing:
            try:
                await self.spawner.start(self.worker_config, self)
            except ZygoteError as exc:
                self._zygote_failures += 1
                if self._zygote_failures >= _ZYGOTE_RESTARTS:
                    self._on_fatal(f"zygote cannot be restarted: {exc}")
                    return
                _log.error("zygote restart failed", reason=str(exc),
                           attempt=self._zygote_failures)
                # Back off, not a tight loop.
                await asyncio.sleep(backoff(self._zygote_failures, _ZYGOTE_BACKOFF, 2.0))
                continue
            self._zygote_failures = 0
            self._zygote_up = True
            _log.info("zygote restarted", pid=self.spawner.pid)
            self._top_up()
            return


def limits(config: Config) -> Limits:
    """What a worker's RESULT frame may hold under `config`."""
    return Limits(config.max_response_body, config.max_header_count, config.max_header_bytes)
