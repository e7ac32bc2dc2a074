"""The worker pool: warm workers, a FIFO queue, deadlines and kills on the daemon's clock.

Every accepted call ends in exactly one outcome (docs/pool.md#one-answer-per-call): the
worker's result, 502 when the worker dies, 503 when the queue is full or too slow, 504 at the
time limit.

Sizing (docs/pool.md#sizing): `workers_min` are always there; while any worker is busy one
spare is kept idle or starting, plus one per queued call, up to `workers_max`, so a burst
finds forks already under way; idle workers above the minimum retire after `idle_timeout`
(the arithmetic: daemon/pool/sizing.py). A worker that leaves (killed, retired, crashed) is
replaced the moment the daemon decides or notices it, never when a request needs it.

The processes themselves (spawning, exits, deaths, the zygote) are daemon/pool/supervisor.py;
each worker's state is its WorkerProc's, which this module asks and commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from fnd.daemon import calls
from fnd.daemon.calls import Call, Outcome, text_outcome
from fnd.daemon.config import Config
from fnd.daemon.ops.status import PoolSnapshot
from fnd.daemon.pool import deaths, sizing
from fnd.daemon.pool.fork_worker import ForkingWorker, forked_slot_problem
from fnd.daemon.pool.queue import WaitQueue
from fnd.daemon.pool.spawner import Spawner
from fnd.daemon.pool.supervisor import FunctionsBroken, PoolError, WorkerSupervisor, limits
from fnd.daemon.pool.worker_proc import BUSY, DEAD, IDLE, STARTING, CallRefused, WorkerProc
from fnd.daemon.pool.zygote_client import ZygoteError
from fnd.daemon.stats import Stats
from fnd.protocol import messages as m

__all__ = ["FunctionsBroken", "Pool", "PoolError"]

_MIB = 1024 * 1024
# Outside checks (docs/security.md). A thread that ended a moment ago may still be counted in
# its cgroup: re-check a few times, on the call's deadline, before calling it a leftover.
_VERIFY_RETRIES = (0.001, 0.005, 0.02, 0.1)
_IDLE_CPU_LIMIT = 0.02  # CPU seconds an idle worker may use (a tick of the last call may land late)
_SWEEP_INTERVAL = 1.0  # idle CPU, worker age, stuck workers, quarantined slots
_CORES = os.cpu_count() or 1
_STUCK_GRACE = 2.0  # past its limit (or its kill) this long, a worker counts as stuck


class Pool(WorkerSupervisor):
    """Calls, the queue, the idle stack, sizing and reloads, on top of the worker processes
    (daemon/pool/supervisor.py)."""

    def __init__(
        self,
        config: Config,
        worker_config: m.WorkerConfig,
        stats: Stats,
        spawner: Spawner,
        on_fatal: Callable[[str], None] = lambda reason: None,
    ) -> None:
        super().__init__(config, worker_config, stats, spawner, on_fatal)
        self._sweep_timer: asyncio.TimerHandle | None = None
        self.stuck = 0
        self._idle: list[WorkerProc] = []  # LIFO: hot workers stay hot, the bottom retires
        self._queue = WaitQueue(self._loop, config.queue_timeout)
        self._idle_timer: asyncio.TimerHandle | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
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
                     checks: list[m.FunctionCheck] | None = None,
                     known: list[tuple[str, str]] | None = None,
                     blocking: bool = False) -> list[tuple[str, str]]:
        """Start the new generation, then switch to it in one step; old workers retire.

        `switch` runs inside that step (the front-end swaps its route table there), so no
        call routed by the new table reaches an old worker. If the new workers cannot start,
        or a function of `checks` cannot run (unless config.allow_broken), the old generation
        keeps serving and PoolError says why. `known` are problems found before (the scan's):
        they come first in the list, and with `blocking` they refuse the generation whatever
        config.allow_broken says. Returns the problems found (allowed ones).
        """
        old_worker_config = self.worker_config
        await self.spawner.configure(worker_config)
        problems = [*(known or []), *await self.preflight(
            checks or [], max(timeout, config.timeout), dict(config.context_defaults()))]
        if blocking or (problems and not config.allows_broken):
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
        self.limits = limits(config)
        self.generation += 1
        self._queue.timeout = config.queue_timeout
        if switch is not None:
            switch()
        old_idle, now = list(self._idle), time.monotonic()
        for worker in fresh:
            if worker.state == IDLE and not worker.leaving:
                # Its CPU mark stays the one taken when it became ready: CPU used while it
                # was held counts too.
                worker.went_idle(now, worker.cpu_mark)
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
                # Only workers that ran a call in their own process are idle (they count as
                # capacity): one leaves, so that a fresh one takes this call (replaced in
                # worker_leaving).
                self._idle[0].retire(deaths.ISOLATION)
            self._top_up()
        return await call.result

    def _offer(self, call: Call) -> bool:
        """Hand `call` to an idle worker that may take it; False if none can (queue it)."""
        idle = self._idle
        while idle:
            index = len(idle) - 1
            if call.isolated:  # only a worker that has run no call in its own process
                index = next((i for i in range(index, -1, -1) if idle[i].pristine), -1)
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
            if call.isolated and not worker.pristine:
                self._queue.push_front(call)
                worker.retire(deaths.ISOLATION)  # its fresh replacement takes the call
                return
            if self._send(worker, call):
                return
        worker.went_idle(time.monotonic(), self.spawner.cpu(worker.slot))
        self._idle.append(worker)
        if self._idle_timer is None and len(self._live) > self.config.workers_min:
            self._schedule_idle_check()

    def _on_deadline(self, worker: WorkerProc, call: Call) -> None:
        call.timer = None
        if worker.state == DEAD:
            return  # it died first: its death report (bounded wait) answers 502 with why
        hint = ""
        if call.returned and self.config.dev:
            hint = ("; the handler returned without calling callback: respond with "
                    "callback(None, response), or return the response from "
                    "handler(context, event)")
        call.resolve(text_outcome(
            504, calls.TIMEOUT, f"function timed out after {call.timeout:g} s{hint}"
        ))
        worker.kill("timeout", deaths.TIMEOUT)

    # -- sizing -------------------------------------------------------------------------
    def _top_up(self) -> None:
        """Fork what the pool is short of: the minimum, one spare while busy, the queue."""
        if not (self._zygote_up and self.spawner.alive):
            return  # _restart_zygote tops up once the zygote is back
        count = sizing.to_start(
            live=len(self._live), idle=len(self._idle), starting=len(self._starting),
            queued=len(self._queue), workers_min=self.config.workers_min,
            workers_max=self.config.workers_max, free_slots=self._slots.spare(),
            closing=self.closing,
        )
        if count == 0:
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

    def _schedule_idle_check(self) -> None:
        if not self._idle:
            return
        due = self._idle[0].idle_since + self.config.idle_timeout - time.monotonic()
        self._idle_timer = self._loop.call_later(max(due, 0.01), self._retire_idle)

    def _retire_idle(self) -> None:
        """Idle workers above the minimum leave after idle_timeout, oldest first."""
        self._idle_timer = None
        horizon = time.monotonic() - self.config.idle_timeout
        count = sizing.may_retire(live=len(self._live), idle=len(self._idle),
                                  starting=len(self._starting),
                                  workers_min=self.config.workers_min)
        for _ in range(count):
            if not self._idle or self._idle[0].idle_since > horizon:
                break
            self._idle[0].retire(deaths.IDLE)  # leaves the idle stack (worker_leaving)
        if len(self._live) > self.config.workers_min:
            self._schedule_idle_check()

    # -- PoolEvents, called by WorkerProc (the others: supervisor.py) --------------------
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
            worker.kill(f"{tasks - 1} thread(s) or process(es) left in its slot after the "
                        "call", deaths.UNCLEAN)
            return
        if call.isolated:  # its child is gone: the slot must be as the next call needs it
            why = forked_slot_problem(self.spawner, worker, self.still_running(worker))
            if why is not None:
                self._finalize(call)
                worker.kill(*why)
                return
        if call.cpu is not None and call.started:
            # The worker's figure (checked finite and not negative) can claim no more than
            # its cores could have run; the cgroup counter is read only when it goes idle.
            call.cpu = min(call.cpu, (time.perf_counter() - call.started) * _CORES)
        self._finalize_after_next(call)
        worker.verified_idle(call.cpu or 0.0)
        recycle = worker.recycle_due(self.generation, self.config.max_rss_mb * _MIB)
        if recycle is not None:
            worker.retire(recycle)  # worker_leaving schedules its replacement
        else:
            if call.isolated and isinstance(worker, ForkingWorker):
                worker.stand_by(call)  # the next isolated call finds its child waiting
            self._release(worker)

    def _forget(self, worker: WorkerProc) -> None:
        super()._forget(worker)
        if worker in self._idle:
            self._idle.remove(worker)

    # -- upkeep -------------------------------------------------------------------------
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
                if worker.recycling.too_old(now - worker.spawned_at):
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

    # -- reporting ----------------------------------------------------------------------
    def ready_workers(self) -> int:
        """Workers of the serving generation that are up (idle or busy): what /readyz counts."""
        return sum(1 for w in self.workers.values()
                   if w.state in (IDLE, BUSY) and not w.leaving)

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
