"""The worker pool: prewarmed workers, a FIFO queue, deadlines and kills on the daemon's clock.

Every accepted call ends in exactly one outcome (SPEC 8.3): the worker's result, 502 when the
worker dies, 503 when the queue is full or too slow, 504 at the time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from daemon import calls
from daemon.calls import Call, Outcome, text_outcome
from daemon.cgroups import CgroupError
from daemon.config import Config
from daemon.logs import get_logger
from daemon.stats import Stats
from daemon.worker_proc import BUSY, DEAD, IDLE, STARTING, WorkerProc, describe_exit
from daemon.zygote_client import ZygoteClient, ZygoteError
from protocol import messages as m
from protocol.sandbox_settings import missing_layers

_log = get_logger("fnd.pool")
_EXIT_STATUS_WAIT = 2.0  # how long a crash report waits for the zygote's exit status
_ZYGOTE_RESTARTS = 5  # consecutive failed zygote restarts before the daemon gives up


class PoolError(Exception):
    """The pool could not reach a serving state; the message says why."""


class _QueueTimeout(Exception):
    pass


_SWEEP_INTERVAL = 0.05  # how often queued requests are checked against queue_timeout


class Pool:
    def __init__(
        self,
        config: Config,
        worker_config: m.WorkerConfig,
        stats: Stats,
        on_fatal: Callable[[str], None] = lambda reason: None,
        prepare_slot: Callable[[int], None] = lambda slot: None,
        kill_slot: Callable[[int], None] = lambda slot: None,
        oom_killed: Callable[[int], bool] = lambda slot: False,
    ) -> None:
        self.config = config
        self.worker_config = worker_config
        self.stats = stats
        # Looked up once: asyncio.get_running_loop() costs a getpid() syscall on 3.11.
        self._loop = asyncio.get_running_loop()
        self._on_fatal = on_fatal
        self._prepare_slot = prepare_slot
        self._kill_slot = kill_slot
        self._oom_killed = oom_killed
        self.workers: dict[int, WorkerProc] = {}  # by slot, including dying ones
        self._by_pid: dict[int, WorkerProc] = {}
        self._idle: list[WorkerProc] = []  # LIFO: hot workers stay hot, extras can retire
        # (enqueued at, waiter), oldest first. One sweep timer expires them, not one timer each.
        self._waiters: deque[tuple[float, asyncio.Future[WorkerProc]]] = deque()
        self._sweeping = False
        self._free_slots = list(reversed(range(config.workers_max * 2)))
        self._tasks: set[asyncio.Task[Any]] = set()
        self.generation = 0
        self.closing = False
        self._zygote_failures = 0
        self.zygote = ZygoteClient(
            on_spawned=self._on_spawned,
            on_spawn_failed=self._on_spawn_failed,
            on_exited=self._on_exited,
            on_lost=self._on_zygote_lost,
        )

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self, timeout: float = 60.0) -> None:
        """Start the zygote and `workers_min` workers; return once all of them are ready."""
        try:
            await self.zygote.start(self.worker_config)
        except ZygoteError as exc:
            raise PoolError(str(exc)) from None
        first = [self._spawn() for _ in range(self.config.workers_min)]
        done, pending = await asyncio.wait([w.ready for w in first], timeout=timeout)
        failures = [w.failure or str(w.ready.exception()) for w in first
                    if w.ready in done and w.ready.exception() is not None]
        if failures or pending:
            reason = failures[0] if failures else f"workers not ready within {timeout:.0f} s"
            await self.stop(drain_timeout=0)
            raise PoolError(f"cannot start workers: {reason}")

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop taking calls, let busy workers finish (up to the drain timeout), kill the rest."""
        self.closing = True
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(_QueueTimeout())
        limit = self.config.drain_timeout if drain_timeout is None else drain_timeout
        busy = [w.call.result for w in self.workers.values() if w.call is not None]
        if busy and limit > 0:
            await asyncio.wait(busy, timeout=limit)
        for worker in list(self.workers.values()):
            worker.kill("daemon stopping")
        await self.zygote.stop()
        for worker in list(self.workers.values()):
            worker.close_pipes()
        for task in list(self._tasks):
            task.cancel()

    async def reload(self, config: Config, worker_config: m.WorkerConfig,
                     timeout: float = 60.0) -> None:
        """Start `workers_min` workers on the new code; retire the old ones once they are idle.

        If the new workers cannot start, the old generation keeps serving and PoolError says why.
        """
        old_config, old_worker_config = self.config, self.worker_config
        self.config, self.worker_config = config, worker_config
        for slot in range(old_config.workers_max * 2, config.workers_max * 2):
            self._free_slots.insert(0, slot)
        await self.zygote.configure(worker_config)
        self.generation += 1
        fresh = [self._spawn() for _ in range(config.workers_min)]
        await asyncio.wait([w.ready for w in fresh], timeout=timeout)
        failed = [w for w in fresh if not w.ready.done() or w.ready.exception() is not None]
        if failed:
            reason = failed[0].failure or "new workers not ready in time"
            self.generation -= 1
            self.config, self.worker_config = old_config, old_worker_config
            await self.zygote.configure(old_worker_config)
            for worker in fresh:
                worker.kill("reload failed")
            raise PoolError(f"reload failed: {reason}")
        for worker in list(self._idle):
            if worker.generation != self.generation:
                self._idle.remove(worker)
                self.stats.worker_restart("reload")
                worker.retire()

    # -- calls --------------------------------------------------------------------------
    async def invoke(self, call: Call) -> Outcome:
        call.queued = time.perf_counter()
        worker = self._take_idle()
        if worker is None:
            if self.closing:
                return text_outcome(503, calls.OVERLOAD, "server is shutting down", Retry_After="1")
            if len(self._waiters) >= self.config.queue_max:
                return text_outcome(
                    503, calls.OVERLOAD, "all workers are busy and the queue is full",
                    Retry_After="1",
                )
            try:
                worker = await self._wait_for_worker()
            except _QueueTimeout:
                return text_outcome(
                    503, calls.OVERLOAD,
                    f"no worker became free within {self.config.queue_timeout:g} s",
                    Retry_After="1",
                )
        call.started = time.perf_counter()
        worker.start_call(call)
        call.timer = self._loop.call_later(call.timeout, self._on_deadline, worker, call)
        return await call.result

    async def _wait_for_worker(self) -> WorkerProc:
        waiter: asyncio.Future[WorkerProc] = self._loop.create_future()
        entry = (time.perf_counter(), waiter)
        self._waiters.append(entry)
        if not self._sweeping:
            self._sweeping = True
            self._loop.call_later(_SWEEP_INTERVAL, self._sweep)
        self._grow()
        try:
            return await waiter
        except BaseException as exc:
            # Still queued after a timeout or a cancel (never on success: _release popped it;
            # a failed deque.remove would format the future's repr into its message).
            if not waiter.done() or waiter.cancelled() or waiter.exception() is not None:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            elif isinstance(exc, asyncio.CancelledError):
                # The client went away just as a worker was handed over: pass it on.
                self._release(waiter.result())
            raise

    def _sweep(self) -> None:
        """Fail the requests that waited longer than queue_timeout (oldest are first)."""
        limit = time.perf_counter() - self.config.queue_timeout
        while self._waiters and self._waiters[0][0] <= limit:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(_QueueTimeout())
        self._sweeping = bool(self._waiters)
        if self._sweeping:
            self._loop.call_later(_SWEEP_INTERVAL, self._sweep)

    def longest_wait(self) -> float:
        """Seconds the oldest queued request has waited (0 with an empty queue)."""
        return time.perf_counter() - self._waiters[0][0] if self._waiters else 0.0

    def _take_idle(self) -> WorkerProc | None:
        while self._idle:
            worker = self._idle.pop()
            if worker.state == IDLE and not worker.retiring:
                return worker
        return None

    def _release(self, worker: WorkerProc) -> None:
        """An idle worker goes to the oldest waiter, else back to the idle stack."""
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    def _on_deadline(self, worker: WorkerProc, call: Call) -> None:
        if call.resolve(text_outcome(
            504, calls.TIMEOUT, f"function timed out after {call.timeout:g} s"
        )):
            self.stats.worker_restart("timeout")
        worker.kill("timeout")

    # -- workers ------------------------------------------------------------------------
    def _alive(self) -> list[WorkerProc]:
        return [w for w in self.workers.values() if w.state != DEAD]

    def _spawn(self) -> WorkerProc:
        slot = self._free_slots.pop()
        worker = WorkerProc(self, slot, self.generation)
        if self.config.max_requests:
            # Jitter spreads recycling out so that workers do not all restart together.
            worker.request_limit = self.config.max_requests + random.randint(
                0, max(0, self.config.max_requests_jitter)
            )
        self.workers[slot] = worker
        self._run(self._start_worker(worker))
        return worker

    async def _start_worker(self, worker: WorkerProc) -> None:
        try:
            self._prepare_slot(worker.slot)
            pipes = await self.zygote.spawn(worker.slot)
            await worker.attach(pipes)
        except (ZygoteError, OSError, CgroupError) as exc:
            worker.failure = f"spawn failed: {exc}"
            worker.kill(worker.failure)

    def _grow(self) -> None:
        alive = self._alive()
        starting = sum(1 for w in alive if w.state == STARTING)
        if len(alive) < self.config.workers_max and starting < len(self._waiters) and (
            self._free_slots
        ):
            self._spawn()

    def _ensure_min(self) -> None:
        if self.closing:
            return
        alive = [w for w in self._alive() if not w.retiring]
        for _ in range(self.config.workers_min - len(alive)):
            if not self._free_slots:
                break
            self._spawn()

    def _due_for_recycling(self, worker: WorkerProc) -> str | None:
        cfg = self.config
        if worker.request_limit and worker.served >= worker.request_limit:
            return "max_requests"
        if cfg.max_rss_mb and worker.rss > cfg.max_rss_mb * 1024 * 1024:
            return "max_rss"
        if worker.generation != self.generation:
            return "reload"
        return None

    # PoolEvents, called by WorkerProc
    def worker_ready(self, worker: WorkerProc) -> None:
        missing = missing_layers(worker.layers) if self.config.sandbox == "strict" else []
        if missing:
            # Fail closed: a worker without every protection never gets a call (SPEC 7.5).
            details = ", ".join(f"{name} ({worker.layers.get(name, 'not reported')})"
                                for name in missing)
            worker.failure = f"sandbox layers missing: {details}"
            worker.kill(f"failed to start: {worker.failure}")
            return
        if self.closing or worker.generation != self.generation:
            worker.retire()
            return
        self._release(worker)

    def worker_done(self, worker: WorkerProc, call: Call, clean: bool, reason: str | None) -> None:
        self._finalize(call)
        if not clean:
            self.stats.worker_restart("unclean")
            worker.kill(reason or "left threads or processes running")
            return
        if worker.state != IDLE:
            return
        recycle = self._due_for_recycling(worker)
        if recycle is not None or self.closing:
            if recycle:
                self.stats.worker_restart(recycle)
            worker.retire()
            self._ensure_min()
            return
        self._release(worker)

    def worker_gone(self, worker: WorkerProc) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        call = worker.call
        if call is not None:
            worker.call = None
            if call.result.done():
                self._finalize(call)
            else:
                self._run(self._report_crash(worker, call))
        elif worker.kill_reason and worker.kill_reason.startswith("failed to start"):
            _log.error("worker failed to start", slot=worker.slot, reason=worker.failure)
        if worker.exit_status.done():
            self._free_slot(worker)
        self._ensure_min()
        self._grow()

    def kill_slot(self, slot: int) -> None:
        self._kill_slot(slot)

    async def _report_crash(self, worker: WorkerProc, call: Call) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(worker.exit_status), _EXIT_STATUS_WAIT)
        status = worker.exit_status.result() if worker.exit_status.done() else None
        if self._oom_killed(worker.slot):
            why = "worker exceeded its memory limit"
            self.stats.worker_restart("oom")
        else:
            why = f"worker {describe_exit(status)}"
            self.stats.worker_restart("crash")
        reason = worker.kill_reason or why
        call.resolve(text_outcome(502, calls.CRASH, f"function crashed: {reason}"))
        self._finalize(call)

    def _finalize(self, call: Call) -> None:
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        if not call.result.done():
            return
        outcome = call.result.result()
        self.stats.record(
            invocation_id=call.id,
            method=call.method,
            path=call.path,
            function=call.function["name"],
            status=outcome.status,
            outcome=outcome.outcome,
            duration=time.perf_counter() - call.received,
            queue_wait=call.queue_wait,
            cpu=call.cpu,
            rss=call.rss,
            worker_pid=call.worker_pid,
            reason=outcome.reason,
        )

    def _free_slot(self, worker: WorkerProc) -> None:
        if self.workers.get(worker.slot) is worker:
            del self.workers[worker.slot]
            self._kill_slot(worker.slot)  # anything it left in its cgroup goes with it
            self._free_slots.append(worker.slot)
            worker.close_pipes()

    # zygote events
    def _on_spawned(self, slot: int, pid: int) -> None:
        worker = self.workers.get(slot)
        if worker is None or worker.state == DEAD:
            return
        worker.pid = pid
        self._by_pid[pid] = worker
        if worker.kill_reason:
            worker.kill(worker.kill_reason)

    def _on_spawn_failed(self, slot: int, reason: str) -> None:
        worker = self.workers.get(slot)
        if worker is not None:
            worker.failure = reason
            worker.kill(f"failed to start: {reason}")
            if not worker.exit_status.done():
                worker.exit_status.set_result(-1)
            self._free_slot(worker)

    def _on_exited(self, pid: int, status: int) -> None:
        worker = self._by_pid.pop(pid, None)
        if worker is None:
            return
        if not worker.exit_status.done():
            worker.exit_status.set_result(status)
        if worker.state == DEAD:
            self._free_slot(worker)

    def _on_zygote_lost(self, reason: str) -> None:
        if self.closing:
            return
        _log.error("zygote lost", reason=reason)
        self.stats.worker_restart("zygote")
        self._run(self._restart_zygote())

    async def _restart_zygote(self) -> None:
        # Its workers die with it (PDEATHSIG); their pipes' EOF reports their calls as 502.
        await self.zygote.stop()
        for worker in list(self.workers.values()):
            worker.kill("zygote died")
            if not worker.exit_status.done():
                worker.exit_status.set_result(-1)
            self._by_pid.pop(worker.pid or -1, None)
        while not self.closing:
            try:
                await self.zygote.start(self.worker_config)
            except ZygoteError as exc:
                self._zygote_failures += 1
                if self._zygote_failures >= _ZYGOTE_RESTARTS:
                    self._on_fatal(f"zygote cannot be restarted: {exc}")
                    return
                await asyncio.sleep(0.1 * 2 ** self._zygote_failures)  # back-off, not a sync
                continue
            self._zygote_failures = 0
            for worker in list(self.workers.values()):
                if worker.state == DEAD:
                    self._free_slot(worker)
            self._ensure_min()
            return

    def _run(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- reporting ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        workers = [w.snapshot() for w in self.workers.values()]
        states = {state: 0 for state in (STARTING, IDLE, BUSY)}
        for w in self.workers.values():
            if w.state in states:
                states[w.state] += 1
        return {
            "workers": states | {"min": self.config.workers_min, "max": self.config.workers_max},
            "queue": len(self._waiters),
            "queue_longest_wait": round(self.longest_wait(), 3),
            "per_worker": workers,
            "zygote_pid": self.zygote.pid,
            "now": time.perf_counter(),
        }

