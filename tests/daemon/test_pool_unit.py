"""The pool's decisions, on an in-memory spawner (tests/daemon/fake_spawner.py): no processes.

Each test plays the workers' side of the pipes and checks what a client or an operator would
see: the call's status and reason, which workers and slots were killed, how many were forked.
The same behaviour with real workers is covered end to end in tests/e2e/.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from fnd.daemon import deaths, pool_queue
from fnd.daemon import pool as pool_module
from fnd.daemon.pool import FunctionsBroken, PoolError
from fnd.protocol import messages as m
from tests.daemon.fake_spawner import SIGKILLED, FakeSpawner, FakeWorker, exit_code, hang
from tests.daemon.pool_harness import Scene, call, run, until


def holding(fake: FakeSpawner) -> list[tuple[FakeWorker, m.Message]]:
    """Make every worker hold its calls; the test answers them from the returned list."""
    held: list[tuple[FakeWorker, m.Message]] = []
    fake.on_invoke = lambda worker, invoke: held.append((worker, invoke))
    return held


# -- dispatch and the queue ----------------------------------------------------------------
def test_a_call_is_answered_by_a_warm_worker() -> None:
    async def body(s: Scene) -> None:
        assert len(s.fake.workers) == 1  # workers_min, forked at start
        outcome = await s.invoke("hello")
        assert (outcome.status, outcome.body) == (200, b"hello")
        assert s.fake.workers[0].received[0]["event"] == {"say": "hello"}
        assert s.stats.outcomes["ok"] == 1

    run(body)


def test_calls_beyond_the_pool_queue_then_run_in_order() -> None:
    fake = FakeSpawner()
    held = holding(fake)

    async def body(s: Scene) -> None:
        first, second, third = (s.start(say=w) for w in ("a", "b", "c"))
        await until(lambda: len(held) == 2)  # workers_max = 2: the third waits
        assert s.pool.snapshot()["queue"] == 1
        worker, invoke = held.pop(0)
        worker.answer(invoke, body=b"first")
        await until(lambda: len(held) == 2)  # the freed worker took the queued call
        assert held[1][0] is worker and held[1][1]["event"] == {"say": "c"}
        for w, inv in held:
            w.answer(inv, body=inv["event"]["say"].encode())
        assert [(await t).body for t in (first, second, third)] == [b"first", b"b", b"c"]
        assert len(fake.workers) == 2

    run(body, fake, workers_max=2)


def test_a_full_queue_answers_503_at_once() -> None:
    fake = FakeSpawner()
    holding(fake)

    async def body(s: Scene) -> None:
        s.start(), s.start()
        await until(lambda: s.pool.snapshot()["queue"] == 1)
        outcome = await s.invoke()
        assert outcome.status == 503
        assert outcome.reason == "all workers are busy and the queue is full"
        assert ("Retry-After", "1") in outcome.headers

    run(body, fake, workers_max=1, queue_max=1)


def test_a_call_that_waits_past_queue_timeout_gets_503() -> None:
    fake = FakeSpawner()
    holding(fake)

    async def body(s: Scene) -> None:
        s.start()
        await until(lambda: s.pool.snapshot()["workers"]["busy"] == 1)
        outcome = await s.invoke()
        assert outcome.status == 503
        assert outcome.reason == "no worker became free within 0.05 s"

    run(body, fake, workers_max=1, queue_timeout=0.05)


class _Closed:
    def is_closing(self) -> bool:
        return True


def test_a_queued_call_whose_client_left_is_dropped_unrun() -> None:
    fake = FakeSpawner()
    held = holding(fake)

    async def body(s: Scene) -> None:
        s.start()
        await until(lambda: len(held) == 1)
        gone = asyncio.ensure_future(s.pool.invoke(call("gone", transport=_Closed())))
        also_gone = asyncio.ensure_future(s.pool.invoke(call("gone", transport=_Closed())))
        outcome = await gone
        assert outcome.status == pool_queue.CLIENT_GONE
        assert (await also_gone).status == pool_queue.CLIENT_GONE
        worker, invoke = held.pop()
        worker.answer(invoke)
        await until(lambda: s.pool.snapshot()["workers"]["idle"] == 1)
        assert all(inv["event"] != {"say": "gone"} for w in fake.workers for inv in w.received)

    run(body, fake, workers_max=1)


def test_a_dropped_client_found_when_a_worker_frees_up() -> None:
    fake = FakeSpawner()
    held = holding(fake)

    async def body(s: Scene) -> None:
        s.start()
        await until(lambda: len(held) == 1)
        gone = asyncio.ensure_future(s.pool.invoke(call("gone", transport=_Closed())))
        await until(lambda: s.pool.snapshot()["queue"] == 1)
        worker, invoke = held.pop()
        worker.answer(invoke)  # the worker pops the queue before the sweep sees the client
        assert (await gone).status == pool_queue.CLIENT_GONE

    run(body, fake, workers_max=1)


# -- deadlines and deaths ------------------------------------------------------------------
def test_a_call_past_its_time_limit_gets_504_and_its_worker_is_killed() -> None:
    fake = FakeSpawner()
    fake.on_invoke = hang

    async def body(s: Scene) -> None:
        victim = fake.workers[0]
        outcome = await s.invoke(timeout=0.02)
        assert outcome.status == 504
        assert outcome.reason == "function timed out after 0.02 s"
        await until(lambda: s.stats.restarts[deaths.TIMEOUT] == 1)
        assert fake.group_kills == [victim.pid] and not victim.alive
        await until(lambda: len(fake.live()) == 1)  # replaced

    run(body, fake)


@pytest.mark.parametrize(("status", "oom", "reason", "cause"), [
    (exit_code(3), False, "worker exited with code 3", deaths.EXIT),
    (signal.SIGSEGV.value, False, "worker killed by SIGSEGV", deaths.SIGNAL),
    (SIGKILLED, True, "worker exceeded its memory limit", deaths.OOM),
])
def test_a_worker_dying_mid_call_gives_502_with_why(status: int, oom: bool, reason: str,
                                                    cause: str) -> None:
    fake = FakeSpawner()
    if oom:
        fake.oom.add(0)
    fake.on_invoke = lambda worker, invoke: worker.exit(status)

    async def body(s: Scene) -> None:
        outcome = await s.invoke()
        assert outcome.status == 502
        assert outcome.reason == f"function crashed: {reason}"
        await until(lambda: len(fake.live()) == 1)  # replaced
        assert s.stats.restarts[cause] == 1

    run(body, fake)


def test_a_death_without_an_exit_status_is_still_answered(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr(pool_module, "EXIT_STATUS_WAIT", 0.01)
    fake = FakeSpawner()
    fake.on_invoke = lambda worker, invoke: worker.exit(0, report=False)

    async def body(s: Scene) -> None:
        outcome = await s.invoke()
        assert outcome.status == 502
        assert outcome.reason == "function crashed: worker died (exit status unknown)"

    run(body, fake)


def test_a_worker_that_closes_its_result_pipe_is_killed_as_a_protocol_breach() -> None:
    fake = FakeSpawner()
    fake.on_invoke = lambda worker, invoke: worker.close_result_pipe()

    async def body(s: Scene) -> None:
        victim = fake.workers[0]
        outcome = await s.invoke()
        assert outcome.status == 502
        assert outcome.reason == "function crashed: closed its result pipe and was killed"
        assert fake.group_kills == [victim.pid]
        assert s.stats.restarts[deaths.PROTOCOL] == 1

    run(body, fake)


def test_an_invalid_frame_fails_the_call_with_500_and_kills_the_worker() -> None:
    fake = FakeSpawner()
    fake.on_invoke = lambda worker, invoke: worker.answer(invoke, status=999)

    async def body(s: Scene) -> None:
        outcome = await s.invoke()
        assert outcome.status == 500
        assert outcome.reason is not None
        assert outcome.reason.startswith("invalid frame from the worker: status 999")
        await until(lambda: s.stats.restarts[deaths.PROTOCOL] == 1)

    run(body, fake)


def test_a_frame_that_is_not_a_frame_kills_the_worker() -> None:
    fake = FakeSpawner()

    def garbage(worker: FakeWorker, invoke: m.Message) -> None:
        import os
        os.write(worker._res_w, b"\xff\xff\xff\xff")  # a length over the frame limit

    fake.on_invoke = garbage

    async def body(s: Scene) -> None:
        outcome = await s.invoke()
        assert outcome.status == 500
        assert s.fake.group_kills == [s.fake.workers[0].pid]

    run(body, fake)


def test_an_unexpected_frame_kills_the_worker() -> None:
    fake = FakeSpawner()
    fake.on_invoke = lambda worker, invoke: worker.send({"t": "bogus"})

    async def body(s: Scene) -> None:
        outcome = await s.invoke()
        assert outcome.status == 500
        assert outcome.reason == "invalid frame from the worker: unexpected message 'bogus'"

    run(body, fake)


def test_done_without_a_result_answers_500_and_the_worker_serves_on() -> None:
    fake = FakeSpawner()
    fake.on_invoke = lambda worker, invoke: worker.send(
        {"t": m.DONE, "id": invoke["id"], "clean": True, "cpu": 0.0, "rss": 0})

    async def body(s: Scene) -> None:
        outcome = await s.invoke()
        assert outcome.status == 500
        assert outcome.reason == "function finished without a response"
        assert fake.group_kills == []

    run(body, fake)


def test_a_call_that_cannot_be_encoded_fails_alone() -> None:
    async def body(s: Scene) -> None:
        bad = call()
        bad.event = {"x": object()}
        outcome = await s.pool.invoke(bad)
        assert outcome.status == 500
        assert outcome.reason is not None and "cannot be sent to a worker" in outcome.reason
        assert (await s.invoke("after")).body == b"after"
        assert s.fake.group_kills == []

    run(body)


def test_output_and_log_frames_are_logged_for_the_call() -> None:
    fake = FakeSpawner()

    def chatty(worker: FakeWorker, invoke: m.Message) -> None:
        worker.print("below python\npartial")
        worker.send({"t": m.LOG, "line": "hello", "stream": "logging", "level": "WARNING"})
        worker.send({"t": m.LOG, "line": "oops", "stream": "stderr"})
        worker.answer(invoke)

    fake.on_invoke = chatty

    async def body(s: Scene) -> None:
        assert (await s.invoke()).status == 200

    run(body, fake)


# -- checks from outside ---------------------------------------------------------------------
def test_a_worker_that_says_it_left_something_running_is_killed_after_its_answer() -> None:
    fake = FakeSpawner()
    fake.on_invoke = lambda worker, invoke: worker.answer(invoke, clean=False)

    async def body(s: Scene) -> None:
        victim = fake.workers[0]
        outcome = await s.invoke()
        assert outcome.status == 200  # the answer stands
        await until(lambda: s.stats.restarts[deaths.UNCLEAN] == 1)
        assert fake.group_kills == [victim.pid]

    run(body, fake)


def test_a_worker_whose_result_says_unclean_is_killed() -> None:
    fake = FakeSpawner()

    def unclean_result(worker: FakeWorker, invoke: m.Message) -> None:
        worker.send({"t": m.RESULT, "id": invoke["id"], "status": 201, "headers": [],
                     "body": b"x", "clean": False})

    fake.on_invoke = unclean_result

    async def body(s: Scene) -> None:
        outcome = await s.invoke()
        assert outcome.status == 201
        await until(lambda: s.stats.restarts[deaths.UNCLEAN] == 1)

    run(body, fake)


def test_tasks_left_in_the_slot_after_done_kill_the_worker(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(pool_module, "_VERIFY_RETRIES", (0.001, 0.001))
    fake = FakeSpawner()
    fake.task_counts[0] = 2  # a thread the worker did not mention

    async def body(s: Scene) -> None:
        outcome = await s.invoke()
        assert outcome.status == 200
        await until(lambda: s.stats.restarts[deaths.UNCLEAN] == 1)
        assert fake.group_kills == [fake.workers[0].pid]

    run(body, fake)


def test_a_thread_that_ends_a_moment_late_is_not_a_leftover(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(pool_module, "_VERIFY_RETRIES", (0.001,))
    fake = FakeSpawner()
    counts = iter([2])  # the first read still counts the call's thread; the re-check does not
    fake.tasks = lambda slot: next(counts, 1)  # type: ignore[method-assign]

    async def body(s: Scene) -> None:
        assert (await s.invoke()).status == 200
        await until(lambda: s.pool.snapshot()["workers"]["idle"] == 2)  # it and the spare
        assert fake.group_kills == [] and next(counts, None) is None

    run(body, fake)


def test_an_idle_worker_that_used_cpu_is_killed_before_it_gets_a_call() -> None:
    async def body(s: Scene) -> None:
        first = s.fake.workers[0]
        await s.invoke()
        await asyncio.sleep(0.03)  # idle longer than the 20 ms an idle worker may use
        s.fake.cpu_used[first.slot] = 0.5
        outcome = await s.invoke("again")
        assert outcome.body == b"again"
        assert s.fake.group_kills == [first.pid]
        assert s.stats.restarts[deaths.IDLE_CPU] == 1
        assert s.fake.workers[1].received[0]["event"] == {"say": "again"}

    run(body, workers_max=1)


def test_the_sweep_kills_idle_cpu_users_and_old_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "_SWEEP_INTERVAL", 0.01)

    async def body(s: Scene) -> None:
        first = s.fake.workers[0]
        await s.invoke()
        await asyncio.sleep(0.03)
        s.fake.cpu_used[first.slot] = 0.5
        await until(lambda: s.stats.restarts[deaths.IDLE_CPU] == 1)
        assert s.fake.group_kills == [first.pid]

    run(body)


def test_a_worker_past_max_worker_age_is_retired_by_the_sweep(monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setattr(pool_module, "_SWEEP_INTERVAL", 0.01)

    async def body(s: Scene) -> None:
        await until(lambda: s.stats.restarts[deaths.MAX_AGE] >= 1)
        assert s.fake.group_kills == []  # retired, not killed
        assert s.fake.workers[0].status == exit_code(0)

    run(body, max_worker_age=0.03)


def test_a_worker_that_does_not_die_is_killed_again_and_counted_stuck(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "_SWEEP_INTERVAL", 0.01)
    monkeypatch.setattr(pool_module, "_STUCK_GRACE", 0.01)
    fake = FakeSpawner()
    fake.on_invoke = hang
    kills: list[int] = []
    fake.kill_group = kills.append  # type: ignore[method-assign,assignment]  # SIGKILL does nothing

    async def body(s: Scene) -> None:
        outcome = await s.invoke(timeout=0.01)
        assert outcome.status == 504
        await until(lambda: s.pool.stuck == 1 and len(kills) >= 2)

    run(body, fake)


def test_a_busy_worker_past_its_deadline_is_killed_by_the_sweep(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "_SWEEP_INTERVAL", 0.01)
    monkeypatch.setattr(pool_module, "_STUCK_GRACE", 0.0)
    fake = FakeSpawner()
    fake.on_invoke = hang

    async def body(s: Scene) -> None:
        task = s.start(timeout=1.0)
        await until(lambda: s.pool.snapshot()["workers"]["busy"] == 1)
        worker = next(iter(s.pool.workers.values()))
        assert worker.call is not None and worker.call.timer is not None
        worker.call.timer.cancel()  # as if the deadline had been missed
        worker.call.timeout = 0.0
        outcome = await task
        assert (outcome.status, outcome.reason) == (
            502, "function crashed: busy past its time limit")
        assert s.stats.restarts[deaths.TIMEOUT] == 1

    run(body, fake)


# -- recycling -------------------------------------------------------------------------------
def test_max_requests_retires_a_worker_after_its_call() -> None:
    async def body(s: Scene) -> None:
        first = s.fake.workers[0]
        assert (await s.invoke("one")).body == b"one"
        await until(lambda: not first.alive)
        assert first.status == exit_code(0)  # it left on EOF, not killed
        assert (await s.invoke("two")).body == b"two"
        assert s.fake.workers[1].received[0]["event"] == {"say": "two"}
        assert s.stats.restarts[deaths.MAX_REQUESTS] == 1
        assert s.fake.group_kills == []

    run(body, max_requests=1, max_requests_jitter=0)


def test_max_rss_retires_a_worker_after_its_call() -> None:
    fake = FakeSpawner()
    fake.on_invoke = lambda worker, invoke: worker.answer(invoke, rss=2 << 20)

    async def body(s: Scene) -> None:
        await s.invoke()
        await until(lambda: s.stats.restarts[deaths.MAX_RSS] == 1)

    run(body, fake, max_rss_mb=1)


def test_max_worker_age_retires_a_worker_after_its_call() -> None:
    fake = FakeSpawner()

    async def body(s: Scene) -> None:
        await asyncio.sleep(0.03)
        await s.invoke()
        await until(lambda: s.stats.restarts[deaths.MAX_AGE] == 1)

    run(body, fake, max_worker_age=0.02)


def test_a_retired_worker_that_lingers_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "_RETIRE_GRACE", 0.01)
    fake = FakeSpawner()
    fake.exit_on_eof = False

    async def body(s: Scene) -> None:
        first = fake.workers[0]
        await s.invoke()
        await until(lambda: fake.group_kills == [first.pid])

    run(body, fake, max_requests=1, max_requests_jitter=0)


def test_idle_workers_above_the_minimum_retire_after_idle_timeout() -> None:
    fake = FakeSpawner()
    held = holding(fake)

    async def body(s: Scene) -> None:
        tasks = [s.start() for _ in range(3)]
        await until(lambda: len(held) == 3)
        for worker, invoke in held:
            worker.answer(invoke)
        await asyncio.gather(*tasks)
        await until(lambda: len(fake.live()) == 1)
        assert s.stats.restarts[deaths.IDLE] == 2

    run(body, fake, workers_max=3, idle_timeout=0.02)


def test_the_spare_stays_while_a_worker_is_busy() -> None:
    fake = FakeSpawner()
    held = holding(fake)

    async def body(s: Scene) -> None:
        tasks = [s.start() for _ in range(3)]
        await until(lambda: len(held) == 3)
        held[0][0].answer(held[0][1])
        held[1][0].answer(held[1][1])
        await asyncio.gather(*tasks[:2])
        await until(lambda: s.stats.restarts[deaths.IDLE] == 1)
        await asyncio.sleep(0.03)
        assert len(fake.live()) == 2  # the busy one and its spare
        held[2][0].answer(held[2][1])
        await tasks[2]

    run(body, fake, workers_max=3, idle_timeout=0.02)


# -- isolation -------------------------------------------------------------------------------
def test_an_isolated_call_gets_a_fresh_worker_killed_afterwards() -> None:
    async def body(s: Scene) -> None:
        await s.invoke("warm")  # the first worker has served: not fresh any more
        outcome = await s.invoke("alone", isolated=True)
        assert outcome.body == b"alone"
        fresh = s.fake.workers[1]
        assert [f["event"] for f in fresh.received] == [{"say": "alone"}]
        await until(lambda: not fresh.alive)
        assert s.fake.group_kills == [fresh.pid]

    run(body, workers_max=2)


def test_an_isolated_call_waits_for_a_fresh_worker_when_only_used_ones_are_idle() -> None:
    async def body(s: Scene) -> None:
        await s.invoke("warm")
        first = s.fake.workers[0]
        outcome = await s.invoke("alone", isolated=True)
        assert outcome.body == b"alone"
        await until(lambda: not first.alive)  # retired to make room for a fresh one
        assert s.stats.restarts[deaths.ISOLATION] == 0  # not counted as a restart

    run(body, workers_max=1)


def test_a_queued_isolated_call_is_not_given_to_a_used_worker() -> None:
    fake = FakeSpawner()
    held = holding(fake)

    async def body(s: Scene) -> None:
        busy = s.start()
        await until(lambda: len(held) == 1)
        alone = s.start(say="alone", isolated=True)
        await until(lambda: s.pool.snapshot()["queue"] == 1)
        used, invoke = held.pop()
        used.answer(invoke)
        await busy
        await until(lambda: len(held) == 1)
        fresh, invoke = held.pop()
        assert fresh is not used and invoke["event"] == {"say": "alone"}
        fresh.answer(invoke, body=b"alone")
        assert (await alone).body == b"alone"

    run(body, fake, workers_max=1)


# -- starting workers ------------------------------------------------------------------------
def test_a_worker_missing_a_sandbox_layer_never_gets_a_call() -> None:
    fake = FakeSpawner()
    fake.layers = {}

    async def body(s: Scene) -> None:
        with pytest.raises(PoolError, match="sandbox layers missing"):
            await s.pool.start(timeout=1.0)

    run(body, fake, start=False)


def test_permissive_mode_serves_without_every_layer() -> None:
    fake = FakeSpawner()
    fake.layers = {}

    async def body(s: Scene) -> None:
        assert (await s.invoke()).status == 200

    run(body, fake, sandbox="permissive")


@pytest.mark.parametrize("how", ["spawn_error", "refusal", "failed_frame", "exit"])
def test_a_worker_that_cannot_start_fails_the_start_with_why(how: str) -> None:
    fake = FakeSpawner()
    if how == "spawn_error":
        fake.spawn_error = OSError("no fds left")
        why = "spawn failed: no fds left"
    elif how == "refusal":
        fake.spawn_refusal = "fork: EAGAIN"
        why = "fork: EAGAIN"
    elif how == "failed_frame":
        fake.auto_ready = False
        fake.spawned_late = True
        why = "cannot import the runtime"
    else:
        fake.auto_ready = False
        why = "worker exited before it was ready"

    async def body(s: Scene) -> None:
        task = asyncio.ensure_future(s.pool.start(timeout=1.0))
        if how == "failed_frame":
            await until(lambda: fake.workers)
            fake.workers[0].send({"t": m.FAILED, "reason": why})
            fake.workers[0].exit(exit_code(1))  # as a worker does after FAILED
        elif how == "exit":
            await until(lambda: fake.workers)
            fake.workers[0].exit(exit_code(1))
        with pytest.raises(PoolError) as raised:
            await task
        assert why in str(raised.value)

    run(body, fake, start=False)


def test_ready_before_spawned_is_fine() -> None:
    fake = FakeSpawner()
    fake.spawned_late = True

    async def body(s: Scene) -> None:
        assert (await s.invoke()).status == 200
        worker = fake.workers[0]
        assert s.pool.snapshot()["per_worker"][0]["pid"] == worker.pid
        s.pool.on_spawned(worker.slot, worker.pid)  # the zygote's word arrives late
        s.pool.on_spawned(worker.slot, worker.pid + 1)  # a stale one is ignored
        assert s.pool.snapshot()["per_worker"][0]["pid"] == worker.pid

    run(body, fake)


def test_a_second_ready_is_a_protocol_breach() -> None:
    async def body(s: Scene) -> None:
        s.fake.workers[0].ready()
        await until(lambda: s.stats.restarts[deaths.PROTOCOL] == 1)
        await until(lambda: len(s.fake.live()) == 1)

    run(body)


def test_the_zygote_failing_to_start_fails_the_pool() -> None:
    fake = FakeSpawner()
    fake.start_error, fake.start_failures_left = "the zygote exited with code 1", -1

    async def body(s: Scene) -> None:
        with pytest.raises(PoolError, match="the zygote exited with code 1"):
            await s.pool.start()

    run(body, fake, start=False)


def test_workers_failing_to_start_back_off_then_the_daemon_gives_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "_BACKOFF_FIRST", 0.001)
    monkeypatch.setattr(pool_module, "_BACKOFF_MAX", 0.004)
    fake = FakeSpawner()

    async def body(s: Scene) -> None:
        fake.auto_ready = False
        fake.on_invoke = lambda worker, invoke: worker.exit(exit_code(2))
        assert (await s.invoke()).status == 502
        # Each replacement dies before it is ready (the fake never says READY any more).
        for _ in range(12):
            await until(lambda: [w for w in fake.live()])
            for worker in fake.live():
                worker.exit(exit_code(1))
            if s.fatal:
                break
            await asyncio.sleep(0.002)
        await until(lambda: bool(s.fatal))
        assert s.fatal[0].startswith("workers cannot start (10 failures in a row, last: ")
        assert s.stats.restarts[deaths.START_FAILED] >= 10

    run(body, fake)


# -- slots -----------------------------------------------------------------------------------
def test_a_slot_with_leftovers_is_killed_and_kept_out_of_use_until_empty(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "_SWEEP_INTERVAL", 0.01)
    fake = FakeSpawner()

    def leave_something(worker: FakeWorker, invoke: m.Message) -> None:
        fake.leftovers.add(worker.slot)
        fake.stubborn.add(worker.slot)
        worker.exit(exit_code(1))

    fake.on_invoke = leave_something

    async def body(s: Scene) -> None:
        assert (await s.invoke()).status == 502
        await until(lambda: 0 in fake.slot_kills)
        await until(lambda: fake.slot_kills.count(0) >= 2)  # the sweep tries again
        fake.on_invoke = hang
        assert all(w.slot != 0 for w in fake.workers[1:])
        fake.stubborn.clear()
        await until(lambda: 0 not in fake.leftovers)
        fake.on_invoke = lambda worker, invoke: worker.exit(exit_code(1))
        for _ in range(2):  # the other slots get used and freed until 0 comes back
            await s.invoke()
        await until(lambda: any(w.slot == 0 for w in fake.workers[1:]))

    run(body, fake, workers_max=1)


def test_a_slot_kill_that_fails_is_logged_and_the_slot_kept_out() -> None:
    fake = FakeSpawner()

    def broken_kill(slot: int) -> None:
        raise OSError("cgroup.kill: EBUSY")

    fake.kill_slot = broken_kill  # type: ignore[method-assign]

    def leave_something(worker: FakeWorker, invoke: m.Message) -> None:
        fake.leftovers.add(worker.slot)
        worker.exit(exit_code(1))

    fake.on_invoke = leave_something

    async def body(s: Scene) -> None:
        assert (await s.invoke()).status == 502
        await until(lambda: len(fake.workers) == 2)
        assert fake.workers[1].slot == 1

    run(body, fake, workers_max=1)


def test_every_slot_dying_makes_new_workers_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "EXIT_STATUS_WAIT", 0.01)  # the death reports, not slots
    fake = FakeSpawner()
    fake.on_invoke = lambda worker, invoke: worker.exit(exit_code(1), report=False)

    async def body(s: Scene) -> None:
        assert (await s.invoke()).status == 502
        assert (await s.invoke()).status == 502
        # Both slots (2 x workers_max) still wait for their worker's exit status.
        await asyncio.sleep(0.02)
        assert len(fake.workers) == 2
        assert s.pool.snapshot()["workers"]["starting"] == 0

    run(body, fake, workers_max=1)


# -- the zygote ------------------------------------------------------------------------------
def test_a_lost_zygote_fails_the_calls_of_its_workers_and_is_restarted() -> None:
    fake = FakeSpawner()
    held = holding(fake)

    async def body(s: Scene) -> None:
        task = s.start()
        await until(lambda: len(held) == 1)
        fake.lose_zygote()
        outcome = await task
        assert (outcome.status, outcome.reason) == (502, "function crashed: zygote died")
        await until(lambda: fake.zygote_starts == 2 and len(fake.live()) >= 1)
        fake.on_invoke = lambda worker, invoke: worker.answer(invoke, body=b"back")
        assert (await s.invoke()).body == b"back"
        assert s.stats.restarts[deaths.ZYGOTE] == 1

    run(body, fake)


def test_a_zygote_that_cannot_be_restarted_stops_the_daemon(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "_ZYGOTE_BACKOFF", 0.0001)
    fake = FakeSpawner()

    async def body(s: Scene) -> None:
        fake.start_error, fake.start_failures_left = "no memory", -1
        fake.lose_zygote()
        await until(lambda: bool(s.fatal))
        assert s.fatal == ["zygote cannot be restarted: no memory"]
        assert fake.zygote_starts == 1 + 5

    run(body, fake)


def test_a_zygote_restart_that_fails_once_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "_ZYGOTE_BACKOFF", 0.0001)
    fake = FakeSpawner()

    async def body(s: Scene) -> None:
        fake.start_error, fake.start_failures_left = "busy", 1
        fake.lose_zygote()
        await until(lambda: fake.zygote_starts == 3 and fake.live())
        assert (await s.invoke()).status == 200
        assert s.fatal == []

    run(body, fake)


# -- reload ----------------------------------------------------------------------------------
def test_reload_switches_generation_and_old_workers_retire_after_their_call() -> None:
    fake = FakeSpawner()
    held = holding(fake)

    async def body(s: Scene) -> None:
        busy = s.start(say="old")
        await until(lambda: len(held) == 1)
        old_busy = held[0][0]
        old_idle = [w for w in fake.workers if w is not old_busy]
        switched: list[int] = []
        problems = await s.pool.reload(s.pool.config, {"dev": True}, timeout=1.0,
                                       switch=lambda: switched.append(s.pool.generation))
        assert problems == [] and switched == [1] and s.pool.generation == 1
        assert fake.configs[-1] == {"dev": True}
        await until(lambda: all(not w.alive for w in old_idle))  # idle old ones retire
        assert old_busy.alive
        old_busy.answer(held[0][1], body=b"old answer")
        assert (await busy).body == b"old answer"  # its call finishes
        await until(lambda: not old_busy.alive)  # then it retires
        assert s.stats.restarts[deaths.RELOAD] == 1 + len(old_idle)
        task = s.start(say="new")
        await until(lambda: len(held) == 2)
        new_worker, invoke = held[1]
        assert new_worker not in old_idle and new_worker is not old_busy
        new_worker.answer(invoke)
        await task

    run(body, fake, workers_max=2)


def test_reload_hands_the_queue_to_the_new_generation() -> None:
    fake = FakeSpawner()
    held = holding(fake)

    async def body(s: Scene) -> None:
        s.start(say="busy")
        await until(lambda: len(held) == 1)
        queued = s.start(say="queued")
        await until(lambda: s.pool.snapshot()["queue"] == 1)
        await s.pool.reload(s.pool.config, {}, timeout=1.0)
        await until(lambda: len(held) == 2)
        worker, invoke = held[1]
        assert worker.spawner is fake and invoke["event"] == {"say": "queued"}
        worker.answer(invoke, body=b"new gen")
        assert (await queued).body == b"new gen"
        held[0][0].answer(held[0][1])

    run(body, fake, workers_max=1)


def test_a_reload_whose_workers_cannot_start_keeps_the_old_generation() -> None:
    fake = FakeSpawner()

    async def body(s: Scene) -> None:
        new: m.WorkerConfig = {"sources": {}}
        fake.auto_ready = False
        with pytest.raises(PoolError, match="reload failed: workers not ready within"):
            await s.pool.reload(s.pool.config, new, timeout=0.02)
        fake.auto_ready = True
        assert s.pool.generation == 0
        assert fake.configs[-1] == {}  # the old configuration is back in the zygote
        assert (await s.invoke()).status == 200
        assert s.stats.restarts[deaths.DISCARDED] == 0  # not counted

    run(body, fake)


def test_a_reload_with_a_broken_function_is_refused() -> None:
    fake = FakeSpawner()
    fake.on_preflight = lambda worker, message: worker.send(
        {"t": m.PREFLIGHT_RESULT, "problems": [["/f", "SyntaxError: invalid syntax"]]})

    async def body(s: Scene) -> None:
        with pytest.raises(FunctionsBroken) as raised:
            await s.pool.reload(s.pool.config, {"dev": False}, timeout=1.0,
                                checks=[["/f", "/p/f.py", True]])
        assert raised.value.problems == [("/f", "SyntaxError: invalid syntax")]
        assert s.pool.generation == 0 and fake.configs[-1] == {}
        assert fake.workers[-1].alive is False  # the worker that loaded them is killed

    run(body, fake)


def test_allow_broken_reloads_anyway_and_returns_the_problems() -> None:
    fake = FakeSpawner()
    fake.on_preflight = lambda worker, message: worker.send(
        {"t": m.PREFLIGHT_RESULT, "problems": [["/g", "NameError"]]})

    async def body(s: Scene) -> None:
        new = s.pool.config.__class__(**{**s.pool.config.__dict__, "allow_broken": True})
        problems = await s.pool.reload(new, {}, timeout=1.0, checks=[["/g", "/p/g.py", True]])
        assert problems == [("/g", "NameError")] and s.pool.generation == 1

    run(body, fake)


@pytest.mark.parametrize("how", ["hang", "die", "slot"])
def test_a_preflight_that_cannot_finish_says_why(how: str) -> None:
    fake = FakeSpawner()
    if how == "hang":
        fake.on_preflight = lambda worker, message: None
        why = "loading the functions took over 0.05 s"
    else:
        fake.on_preflight = lambda worker, message: worker.exit(exit_code(1))
        why = "the worker loading the functions died"

    async def body(s: Scene) -> None:
        if how == "slot":
            s.pool._slots.cap = 1  # every slot in use
            problems = await s.pool.preflight([["/f", "/p/f.py", True]], timeout=0.05)
            assert problems == [("", "no free worker slot to check the functions in")]
            return
        problems = await s.pool.preflight([["/f", "/p/f.py", True]], timeout=0.05)
        assert len(problems) == 1 and problems[0][1].startswith(why)
        assert await s.pool.preflight([], timeout=0.05) == []

    run(body, fake)


def test_a_preflight_worker_that_cannot_start_says_why() -> None:
    fake = FakeSpawner()

    async def body(s: Scene) -> None:
        fake.auto_ready = False
        problems = await s.pool.preflight([["/f", "/p/f.py", True]], timeout=0.02)
        assert problems == [("", "no worker could start to check the functions: "
                                 "workers not ready within 0 s")]

    run(body, fake)


# -- stopping --------------------------------------------------------------------------------
def test_stop_drains_busy_calls_then_refuses() -> None:
    fake = FakeSpawner()
    held = holding(fake)

    async def body(s: Scene) -> None:
        busy = s.start(say="busy")
        await until(lambda: len(held) == 1)
        queued = s.start(say="queued")
        await until(lambda: s.pool.snapshot()["queue"] == 1)
        stopping = asyncio.ensure_future(s.pool.stop(drain_timeout=1.0))
        await asyncio.sleep(0.005)
        worker, invoke = held.pop()
        worker.answer(invoke)
        await until(lambda: len(held) == 1)  # the drain runs the queued call too
        worker, invoke = held.pop()
        worker.answer(invoke, body=b"drained")
        await stopping
        assert (await busy).status == 200 and (await queued).body == b"drained"
        refused = await s.invoke()
        assert (refused.status, refused.reason) == (503, "server is shutting down")

    run(body, fake, workers_max=1)


def test_stop_answers_what_the_drain_timeout_cut_short() -> None:
    fake = FakeSpawner()
    held = holding(fake)

    async def body(s: Scene) -> None:
        busy = s.start()
        await until(lambda: len(held) == 1)
        queued = s.start()
        await until(lambda: s.pool.snapshot()["queue"] == 1)
        await s.pool.stop(drain_timeout=0.01)
        outcome = await busy
        assert outcome.status == 502
        assert outcome.reason == "stopped: the daemon's drain timeout (0.01 s) ran out"
        assert (await queued).status == 503

    run(body, fake, workers_max=1)


def test_snapshot_shows_workers_and_the_queue() -> None:
    fake = FakeSpawner()
    held = holding(fake)

    async def body(s: Scene) -> None:
        s.start()
        await until(lambda: len(held) == 1)
        s.start()
        await until(lambda: s.pool.snapshot()["queue"] == 1)
        snap = s.pool.snapshot()
        assert snap["workers"]["busy"] == 1 and snap["zygote_pid"] == 999_999
        assert snap["queue_longest_wait"] >= 0 and s.pool.longest_wait() >= 0
        busy = [w for w in snap["per_worker"] if w["state"] == "busy"]
        assert busy[0]["function"] == "/f"

    run(body, fake, workers_max=1)
