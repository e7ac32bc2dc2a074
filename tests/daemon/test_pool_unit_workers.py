"""The pool on an in-memory spawner: outside checks, recycling, isolation, starting workers.

See test_pool_unit.py for how these tests work.
"""

from __future__ import annotations

import asyncio

import pytest

from fnd.daemon.pool import deaths, supervisor
from fnd.daemon.pool import pool as pool_module
from fnd.daemon.pool.pool import PoolError
from fnd.protocol import messages as m
from tests.daemon.fake_spawner import FakeSpawner, FakeWorker, exit_code, hang
from tests.daemon.pool_harness import Scene, holding, run, until

pytestmark = pytest.mark.unit


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
    monkeypatch.setattr(supervisor, "_RETIRE_GRACE", 0.01)
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
def test_an_isolated_call_runs_in_a_child_of_a_pristine_worker_that_stays() -> None:
    async def body(s: Scene) -> None:
        await s.invoke("warm")  # the first worker ran a call itself: not pristine any more
        outcome = await s.invoke("alone", isolated=True)
        assert outcome.body == b"alone"
        parent = s.fake.workers[1]
        assert [f["t"] for f in parent.received] == [m.FORK, m.INVOKE]
        assert "event" not in parent.received[0]  # FORK carries no request data
        assert parent.alive and s.fake.group_kills == []

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
    monkeypatch.setattr(supervisor, "_BACKOFF_FIRST", 0.001)
    monkeypatch.setattr(supervisor, "_BACKOFF_MAX", 0.004)
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


# -- readiness (/readyz) -----------------------------------------------------------------------
def test_ready_workers_counts_idle_and_busy_not_leaving_or_starting() -> None:
    fake = FakeSpawner()
    held = holding(fake)

    async def body(s: Scene) -> None:
        assert s.pool.ready_workers() == 2
        task = s.start()
        await until(lambda: held)
        assert s.pool.snapshot()["workers"]["busy"] == 1 and s.pool.ready_workers() == 2
        idle = next(w for w in s.pool.workers.values() if w.call is None)
        idle.kill("test", deaths.TIMEOUT)
        assert s.pool.ready_workers() == 1  # leaving at once; its replacement is not ready yet
        await until(lambda: s.pool.ready_workers() == 2)
        worker, invoke = held[0]
        worker.answer(invoke)
        await task

    run(body, fake, workers_min=2, workers_max=3)
