"""The worker pool: warm workers, a FIFO queue, deadlines and kills on the daemon's clock.

Every accepted call ends in exactly one outcome (docs/pool.md#one-answer-per-call): the
worker's result, 502 when the worker dies, 503 when the queue is full or too slow, 504 at the
time limit.

Sizing (docs/pool.md#sizing): `workers_min` are always there; while any worker is busy one
spare is kept idle or starting, plus one per queued call, up to `workers_max`, so a burst
finds forks already under way; idle workers above the minimum retire after `idle_timeout`. A
worker that leaves (killed, retired, crashed) is replaced the moment the daemon decides or
notices it, never when a request needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

from fnd.daemon import calls
from fnd.daemon.calls import Call, Outcome, text_outcome
from fnd.daemon.config import Config
from fnd.daemon.logs import get_logger
from fnd.daemon.ops.status import PoolSnapshot
from fnd.daemon.pool import deaths
from fnd.daemon.pool.frame_check import Limits
from fnd.daemon.pool.queue import WaitQueue
from fnd.daemon.pool.slots import EXIT_STATUS_WAIT, Slots
from fnd.daemon.pool.spawner import Spawner
from fnd.daemon.pool.worker_proc import BUSY, DEAD, IDLE, STARTING, CallRefused, WorkerProc
from fnd.daemon.pool.zygote_client import ZygoteError
from fnd.daemon.sandbox.cgroups import CgroupError
from fnd.daemon.stats import Stats
from fnd.protocol import messages as m
from fnd.protocol.sandbox_settings import missing_layers

_log = get_logger("fnd.pool")
_ZYGOTE_RESTARTS = 5  # consecutive failed zygote restarts before the daemon gives up
_ZYGOTE_BACKOFF = 0.1  # seconds before the first retry of a failed zygote restart, doubling
# Workers failing to start one after another: back off, then give up (like gunicorn's
# boot-error exit) instead of forking in a tight loop.
_START_FAILURES = 10
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 2.0
_RETIRE_GRACE = 5.0  # a retired worker that has not exited after this long is killed
# Outside checks (docs/security.md). A thread that ended a moment ago may still be counted in
# its cgroup: re-check a few times, on the call's deadline, before calling it a leftover.
_VERIFY_RETRIES = (0.001, 0.005, 0.02, 0.1)
_IDLE_CPU_LIMIT = 0.02  # CPU seconds an idle worker may use (a tick of the last call may land late)
_SWEEP_INTERVAL = 1.0  # idle CPU, worker age, stuck workers, quarantined slots
_CORES = os.cpu_count() or 1
_STUCK_GRACE = 2.0  # past its limit (or its kill) this long, a worker counts as stuck


class PoolError(Exception):
    """The pool could not reach a serving state; the message says why."""


class FunctionsBroken(PoolError):
    """Some functions of a new generation cannot run; `problems` lists (route, reason)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        first = ": ".join(part for part in problems[0] if part)
        super().__init__(f"{len(problems)} function problem(s), first: {first}")
        self.problems = problems


class Pool:
    def __init__(
        self,
        config: Config,
        worker_config: m.WorkerConfig,
        stats: Stats,
        spawner: Spawner,
        on_fatal: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.config = config
        self.worker_config = worker_config
        self.stats = stats
        # Looked up once: asyncio.get_running_loop() costs a getpid() syscall on 3.11.
        self._loop = asyncio.get_running_loop()
        self._on_fatal = on_fatal
        self.spawner = spawner  # processes, the zygote and the slots' cgroups
        # (daemon/pool/spawner.py)
        self.limits = _limits(config)
        self._slots = Slots(self._loop, spawner, 2 * config.workers_max, self._top_up_soon)
        self._top_up_due = False  # a top-up is scheduled (events schedule one, never nest it)
        self._sweep_timer: asyncio.TimerHandle | None = None
        self.stuck = 0
        self.workers: dict[int, WorkerProc] = {}  # by slot, dying ones too until reaped
        self._by_pid: dict[int, WorkerProc] = {}
        # Capacity: workers starting, idle or busy that are not leaving (current generation
        # and older ones still finishing a call).
        self._live: set[WorkerProc] = set()
        self._starting: set[WorkerProc] = set()
        self._idle: list[WorkerProc] = []  # LIFO: hot workers stay hot, the bottom retires
        self._queue = WaitQueue(self._loop, config.queue_timeout)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._spawn_after = 0.0  # loop time before which no worker is forked (back-off)
        self._start_failures = 0
        self._zygote_failures = 0
        self._zygote_up = False
        self._started = False
        self.generation = 0
        self.closing = False
        self._refusing = False  # the drain is over: calls get 503

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self, timeout: float = 60.0) -> None:
        """Start the zygote and `workers_min` workers; return once all of them are ready."""
        try:
            await self.spawner.start(self.worker_config, self)
        except ZygoteError as exc:
            raise PoolError(str(exc)) from None
        self._zygote_up = True
        first = [w for w in (self._spawn() for _ in range(self.config.workers_min)) if w]
        self._sweep_timer = self._loop.call_later(_SWEEP_INTERVAL, self._sweep)
        failure = await _wait_ready(first, timeout)
        if failure is not None:
            await self.stop(drain_timeout=0)
            raise PoolError(f"cannot start workers: {failure}")
        self._started = True

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Finish the busy and queued calls, and those still arriving on open connections
        (up to the drain timeout); then refuse calls and kill every worker."""
        self.closing = True  # no more forks than the drain needs
        self._slots.stop_waiting()
        limit = self.config.drain_timeout if drain_timeout is None else drain_timeout
        deadline = self._loop.time() + limit
        while True:  # a call that arrives meanwhile is waited for too
            pending = [w.call.result for w in self.workers.values() if w.call is not None]
            pending += [call.result for call in self._queue.calls()]
            left = deadline - self._loop.time()
            if not pending or left <= 0:
                break
            await asyncio.wait(pending, timeout=left)
        self._refusing = True
        self._queue.fail_all("server is shutting down")
        for worker in list(self.workers.values()):
            call = worker.call
            if call is not None:
                worker.take_call()  # answered and logged here, not again when it dies
                call.resolve(text_outcome(
                    502, calls.CRASH, f"stopped: the daemon's drain timeout ({limit:g} s) ran out"
                ))
                self._finalize(call)
            worker.kill("daemon stopping", deaths.STOPPING)
        for timer in (self._idle_timer, self._retry_timer, self._sweep_timer):
            if timer is not None:
                timer.cancel()
        await self.spawner.stop()
        for worker in list(self.workers.values()):
            worker.close_pipes()
        for task in list(self._tasks):
            task.cancel()

    async def preflight(self, checks: list[m.FunctionCheck], timeout: float,
                        context: dict[str, Any] | None = None) -> list[tuple[str, str]]:
        """Load every function (`checks`) in a worker of the
        configuration the zygote has now, and return the problems found. That worker serves
        nothing: a bootstrap may leave anything behind, so it is killed afterwards."""
        if not checks:
            return []
        worker = await self._spawn_fresh(None, self._loop.time() + timeout)
        if worker is None:
            return [("", f"no worker slot came free within {timeout:g} s to check the "
                         "functions in")]
        try:
            failure = await _wait_ready([worker], timeout)
            if failure is not None:
                return [("", f"no worker could start to check the functions: {failure}")]
            result = worker.start_preflight(checks, context or {})
            try:
                return await asyncio.wait_for(asyncio.shield(result), timeout)
            except TimeoutError:
                return [("", f"loading the functions took over {timeout:g} s: the top-level "
                             "code of one of them does not finish")]
            except RuntimeError as exc:
                return [("", f"the worker loading the functions died: {exc}")]
        finally:
            worker.kill("loaded the functions for the check", deaths.PREFLIGHT)

    async def reload(self, config: Config, worker_config: m.WorkerConfig,
                     timeout: float = 60.0, switch: Callable[[], None] | None = None,
                     checks: list[m.FunctionCheck] | None = None) -> list[tuple[str, str]]:
        """Start the new generation, then switch to it in one step; old workers retire.

        `switch` runs inside that step (the front-end swaps its route table there), so no
        call routed by the new table reaches an old worker. If the new workers cannot start,
        or a function of `checks` cannot run (unless config.allow_broken), the old generation
        keeps serving and PoolError says why. Returns the problems found (allowed ones).
        """
        old_worker_config = self.worker_config
        await self.spawner.configure(worker_config)
        problems = await self.preflight(checks or [], max(timeout, config.timeout),
                                        dict(config.context_defaults()))
        if problems and not config.allows_broken:
            with contextlib.suppress(ZygoteError):
                await self.spawner.configure(old_worker_config)
            raise FunctionsBroken(problems)
        self._slots.cap = max(self._slots.cap, 2 * config.workers_max)
        # Each waits for a slot if none is free: with a small pool the preflight's worker,
        # or an old one still dying, holds one until it is reaped.
        deadline = self._loop.time() + timeout
        fresh: list[WorkerProc] = []
        failure: str | None = None
        for _ in range(config.workers_min):
            worker = await self._spawn_fresh(config, deadline)
            if worker is None:
                failure = f"no worker slot came free within {timeout:g} s for the new generation"
                break
            fresh.append(worker)
        if failure is None:
            failure = await _wait_ready(fresh, timeout)
        if failure is None and self.closing:
            failure = "the daemon is stopping"
        if failure is not None:
            for worker in fresh:
                worker.kill("reload failed", deaths.DISCARDED)
            with contextlib.suppress(ZygoteError):
                await self.spawner.configure(old_worker_config)
            raise PoolError(failure)  # the caller says "reload failed"
        # The switch: nothing below awaits, so no call sees half of it.
        self.config, self.worker_config = config, worker_config
        self.limits = _limits(config)
        self.generation += 1
        self._queue.timeout = config.queue_timeout
        if switch is not None:
            switch()
        old_idle, now = list(self._idle), time.monotonic()
        for worker in fresh:
            if worker.state == IDLE and not worker.leaving:
                worker.idle_since = now
                self._live.add(worker)
                self._idle.append(worker)
        for worker in old_idle:
            worker.retire(deaths.RELOAD)  # busy ones retire when their call is done
        for worker in list(self._idle):
            if worker in self._idle and self._queue:
                self._idle.remove(worker)
                self._release(worker)
        self._top_up()
        return problems

    # -- calls --------------------------------------------------------------------------
    async def invoke(self, call: Call) -> Outcome:
        call.queued = time.perf_counter()
        if self._refusing:
            call.resolve(text_outcome(503, calls.OVERLOAD, "server is shutting down",
                                      Retry_After="1"))
        elif self._offer(call):
            if not self._idle:
                self._top_up()  # the last warm worker just went: fork the spare now
        elif len(self._queue) >= self.config.queue_max:
            call.resolve(text_outcome(
                503, calls.OVERLOAD, "all workers are busy and the queue is full",
                Retry_After="1",
            ))
        else:
            self._queue.push(call)
            if call.isolated and self._idle:
                # Only used workers are idle (they count as capacity): one leaves, so that a
                # fresh one is forked for this call (replaced in worker_leaving).
                self._idle[0].retire(deaths.ISOLATION)
            self._top_up()
        return await call.result

    def _offer(self, call: Call) -> bool:
        """Hand `call` to an idle worker that may take it; False if none can (queue it)."""
        idle = self._idle
        while idle:
            index = len(idle) - 1
            if call.isolated:  # only a worker that has never run anything
                index = next((i for i in range(index, -1, -1) if idle[i].served == 0), -1)
                if index < 0:
                    return False  # queued; invoke() makes room for a fresh worker
            worker = idle.pop(index)
            if not self._still_idle(worker):
                continue
            if not self._send(worker, call):
                idle.append(worker)  # the call failed, not the worker
            return True
        return False

    def _still_idle(self, worker: WorkerProc) -> bool:
        """Kill a worker that used CPU while idle: code of an earlier call still runs there."""
        mark = worker.cpu_mark
        if mark is None:  # its slot's CPU is not accounted on this host
            return True
        if time.monotonic() - worker.idle_since <= _IDLE_CPU_LIMIT:
            return True  # idle for less time than the limit: it cannot have used more (no read)
        cpu = self.spawner.cpu(worker.slot)
        if cpu is None or cpu - mark <= _IDLE_CPU_LIMIT:
            return True
        worker.kill(f"used {(cpu - mark) * 1000:.0f} ms of CPU while idle", deaths.IDLE_CPU)
        return False

    def _send(self, worker: WorkerProc, call: Call) -> bool:
        """Start `call` on `worker`; False (the call answered 500) if it cannot be sent."""
        call.started = time.perf_counter()
        try:
            worker.start_call(call)
        except CallRefused as exc:
            call.resolve(text_outcome(500, calls.ERROR, str(exc)))
            self._finalize(call)
            return False
        call.timer = self._loop.call_later(call.timeout, self._on_deadline, worker, call)
        return True

    def longest_wait(self) -> float:
        """Seconds the oldest queued request has waited (0 with an empty queue)."""
        return self._queue.longest_wait()

    def _release(self, worker: WorkerProc) -> None:
        """An idle worker takes the oldest waiting call, else goes on the idle stack."""
        while (call := self._queue.pop()) is not None:
            if call.isolated and worker.served:
                self._queue.push_front(call)
                worker.retire(deaths.ISOLATION)  # its fresh replacement takes the call
                return
            if self._send(worker, call):
                return
        worker.idle_since = time.monotonic()
        worker.cpu_mark = self.spawner.cpu(worker.slot)  # where it stands as it goes idle
        self._idle.append(worker)
        if self._idle_timer is None and len(self._live) > self.config.workers_min:
            self._schedule_idle_check()

    def _on_deadline(self, worker: WorkerProc, call: Call) -> None:
        call.timer = None
        if worker.state == DEAD:
            return  # it died first: its death report (bounded wait) answers 502 with why
        call.resolve(text_outcome(
            504, calls.TIMEOUT, f"function timed out after {call.timeout:g} s"
        ))
        worker.kill("timeout", deaths.TIMEOUT)

    # -- sizing -------------------------------------------------------------------------
    def _top_up(self) -> None:
        """Fork what the pool is short of: the minimum, one spare while busy, the queue."""
        if not (self._zygote_up and self.spawner.alive):
            return  # _restart_zygote tops up once the zygote is back
        cfg = self.config
        live = len(self._live)
        ready_or_starting = len(self._idle) + len(self._starting)
        busy = live - ready_or_starting
        if self.closing:
            wanted = len(self._queue) - ready_or_starting  # only what the drain still needs
        else:
            spare = 1 if busy > 0 else 0
            wanted = max(len(self._queue) + spare - ready_or_starting, cfg.workers_min - live)
        count = min(wanted, cfg.workers_max - live, self._slots.spare())
        if count <= 0:
            return
        delay = self._spawn_after - self._loop.time()
        if delay > 0:
            if self._retry_timer is None:
                self._retry_timer = self._loop.call_later(delay, self._retry_top_up)
            return
        for _ in range(count):
            self._spawn()

    def _retry_top_up(self) -> None:
        self._retry_timer = None
        self._top_up()

    def _top_up_soon(self) -> None:
        """A top-up from a worker's or a slot's event: run once that event is handled, so
        that a kill or a retire never forks inside the callback that reported it."""
        if not self._top_up_due:
            self._top_up_due = True
            self._loop.call_soon(self._scheduled_top_up)

    def _scheduled_top_up(self) -> None:
        self._top_up_due = False
        self._top_up()

    def _schedule_idle_check(self) -> None:
        if not self._idle:
            return
        due = self._idle[0].idle_since + self.config.idle_timeout - time.monotonic()
        self._idle_timer = self._loop.call_later(max(due, 0.01), self._retire_idle)

    def _retire_idle(self) -> None:
        """Idle workers above the minimum leave after idle_timeout, oldest first."""
        self._idle_timer = None
        horizon = time.monotonic() - self.config.idle_timeout
        while len(self._live) > self.config.workers_min and self._idle and (
            self._idle[0].idle_since <= horizon
        ):
            keep_spare = len(self._live) > len(self._idle) + len(self._starting)
            if keep_spare and len(self._idle) == 1:
                break  # the spare for busy workers stays
            self._idle[0].retire(deaths.IDLE)
        if len(self._live) > self.config.workers_min:
            self._schedule_idle_check()

    # -- workers ------------------------------------------------------------------------
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
        worker = WorkerProc(self, slot, self.generation + 1 if fresh else self.generation)
        if cfg.max_worker_age:
            # Jittered too, so that a pool started at once does not retire at once.
            worker.max_age = cfg.max_worker_age * random.uniform(1.0, 1.1)
        if cfg.max_requests:
            # Jitter spreads recycling out so that workers do not all restart together.
            worker.request_limit = cfg.max_requests + random.randint(
                0, max(0, cfg.max_requests_jitter)
            )
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
            worker.failure = f"spawn failed: {exc}"
            worker.kill(f"failed to start: {worker.failure}", deaths.START_FAILED)
            if worker.pid is None:
                self._exited(worker, -1)  # no process was made
            elif worker.state == DEAD:
                self._free_slot(worker)

    def _due_for_recycling(self, worker: WorkerProc) -> str | None:
        cfg = self.config
        if worker.generation != self.generation:
            return deaths.RELOAD
        if worker.request_limit and worker.served >= worker.request_limit:
            return deaths.MAX_REQUESTS
        if worker.max_age and time.monotonic() - worker.spawned_at >= worker.max_age:
            return deaths.MAX_AGE
        if cfg.max_rss_mb and worker.rss > cfg.max_rss_mb * 1024 * 1024:
            return deaths.MAX_RSS
        return None

    # PoolEvents, called by WorkerProc
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
            worker.failure = f"sandbox layers missing: {details}"
            worker.kill(f"failed to start: {worker.failure}", deaths.START_FAILED)
            return
        self._start_failures = 0
        self._spawn_after = 0.0
        worker.cpu_mark = self.spawner.cpu(worker.slot)
        _log.info("worker ready", pid=worker.pid, slot=worker.slot, generation=worker.generation,
                  start_ms=round((worker.ready_at - worker.spawned_at) * 1000, 1))
        if worker.generation > self.generation:
            return  # a reload's new worker: held until the switch
        if worker.generation < self.generation:
            worker.retire(deaths.RELOAD)
        else:
            self._release(worker)

    def worker_done(self, worker: WorkerProc, call: Call, clean: bool, reason: str | None) -> None:
        if not clean:
            self._finalize(call)
            worker.kill(reason or "left threads or processes running", deaths.UNCLEAN)
            return
        self._verify(worker, call, 0)

    def _verify(self, worker: WorkerProc, call: Call, attempt: int) -> None:
        """DONE is the worker's claim: check from outside that nothing of the call still
        runs (its slot holds one task) before it counts as idle. Until then the call's
        deadline stays armed."""
        if worker.leaving or worker.state != BUSY:
            self._finalize(call)
            return
        tasks = self.spawner.tasks(worker.slot)
        if tasks is not None and tasks > 1:
            if attempt < len(_VERIFY_RETRIES):
                self._loop.call_later(_VERIFY_RETRIES[attempt], self._verify, worker, call,
                                      attempt + 1)
                return
            self._finalize(call)
            worker.kill(f"{tasks - 1} thread(s) or process(es) left in its cgroup after the "
                        "call", deaths.UNCLEAN)
            return
        if call.cpu is not None and call.started:
            # The worker's figure (checked finite and not negative) can claim no more than
            # its cores could have run; the cgroup counter is read only when it goes idle.
            call.cpu = min(call.cpu, (time.perf_counter() - call.started) * _CORES)
        worker.cpu_total += call.cpu or 0.0
        self._finalize(call)
        worker.verified_idle()
        if call.isolated:
            worker.kill("served its one invocation", deaths.ISOLATION)
            return
        recycle = self._due_for_recycling(worker)
        if recycle is not None:
            worker.retire(recycle)  # worker_leaving schedules its replacement
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

    def _forget(self, worker: WorkerProc) -> None:
        """Take a worker out of every capacity count (it is leaving or gone)."""
        self._live.discard(worker)
        self._starting.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)

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

    async def _report_death(self, worker: WorkerProc, call: Call | None) -> None:
        """A worker died on its own: classify it from its exit status, answer its call."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(worker.exit_status), EXIT_STATUS_WAIT)
        if worker.cause is not None:  # meanwhile explained: the zygote died and took it along
            cause, words = worker.cause, worker.kill_reason or worker.cause
        else:
            status = worker.exit_status.result() if worker.exit_status.done() else None
            cause, words = deaths.classify(status, self.spawner.oom_killed(worker.slot))
            if worker.closed_early and cause in (deaths.SIGNAL, deaths.EXIT) and (
                status is None or status < 0
                or (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL)
            ):
                cause, words = deaths.PROTOCOL, "closed its result pipe and was killed"
            if not worker.ready_at and cause == deaths.EXIT:
                cause = deaths.START_FAILED
                words = worker.failure or f"{words} before it was ready"
            worker.cause = cause
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
        backoff = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self._start_failures - 1))
        self._spawn_after = self._loop.time() + backoff

    def _finalize(self, call: Call) -> None:
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        call.complete()  # its log line

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

    # SpawnEvents, reported by the spawner
    def on_spawned(self, slot: int, pid: int) -> None:
        worker = self.workers.get(slot)
        if worker is None or worker.pid not in (None, pid):
            return
        worker.pid = pid
        self._by_pid[pid] = worker
        if worker.kill_reason is not None:
            worker.kill(worker.kill_reason, worker.cause or deaths.STOPPING)

    def on_spawn_failed(self, slot: int, reason: str) -> None:
        worker = self.workers.get(slot)
        if worker is not None and worker.pid is None:
            worker.failure = reason
            worker.set_exit_status(-1)  # first: its death frees the slot at once
            worker.kill(f"failed to start: {reason}", deaths.START_FAILED)
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
                await asyncio.sleep(_ZYGOTE_BACKOFF * 2 ** self._zygote_failures)
                continue
            self._zygote_failures = 0
            self._zygote_up = True
            _log.info("zygote restarted", pid=self.spawner.pid)
            self._top_up()
            return

    def _sweep(self) -> None:
        """Once a second: idle workers that use CPU or are too old, stuck workers, slots."""
        self._sweep_timer = self._loop.call_later(_SWEEP_INTERVAL, self._sweep)
        now = time.monotonic()
        stuck = 0
        for worker in list(self.workers.values()):
            if worker.state == DEAD:
                continue
            if worker.kill_reason is not None:
                if now - worker.kill_sent_at > _STUCK_GRACE:
                    stuck += 1
                    worker.kill(worker.kill_reason, worker.cause or deaths.TIMEOUT)  # again
            elif worker.state == IDLE and worker in self._idle:
                if worker.max_age and now - worker.spawned_at >= worker.max_age:
                    worker.retire(deaths.MAX_AGE)  # replaced at once, like any leaver
                else:
                    self._still_idle(worker)  # kills it if it used CPU
            elif worker.state == BUSY and worker.call is not None and (
                now - worker.busy_since > worker.call.timeout + _STUCK_GRACE
            ):
                stuck += 1  # its deadline should have killed it: make sure
                worker.kill("busy past its time limit", deaths.TIMEOUT)
        self.stuck = stuck
        self._slots.sweep()

    def _run(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- reporting ----------------------------------------------------------------------
    def snapshot(self) -> PoolSnapshot:
        states = {STARTING: 0, IDLE: 0, BUSY: 0}
        for worker in self.workers.values():
            if worker.state in states and not worker.leaving:
                states[worker.state] += 1
            elif worker.state == BUSY:
                states[BUSY] += 1  # an old generation's worker finishing its call
        return {
            "workers": {"idle": states[IDLE], "busy": states[BUSY], "starting": states[STARTING],
                        "min": self.config.workers_min, "max": self.config.workers_max,
                        "stuck": self.stuck},
            "queue": len(self._queue),
            "queue_longest_wait": round(self.longest_wait(), 3),
            "per_worker": [w.snapshot() for w in self.workers.values()],
            "zygote_pid": self.spawner.pid,
            "generation": self.generation,
            "now": time.perf_counter(),
        }


def _limits(config: Config) -> Limits:
    return Limits(config.max_response_body, config.max_header_count, config.max_header_bytes)


async def _wait_ready(workers: list[WorkerProc], timeout: float) -> str | None:
    """None once every worker is ready, else why not (the first failure, or the timeout)."""
    if not workers:
        return None
    done, pending = await asyncio.wait([w.ready for w in workers], timeout=timeout)
    for worker in workers:
        if worker.ready in done and worker.ready.exception() is not None:
            return worker.failure or str(worker.ready.exception())
    if pending:
        return f"workers not ready within {timeout:.0f} s"
    return None
