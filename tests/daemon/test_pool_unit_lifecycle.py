"""The pool on an in-memory spawner: slots, the zygote, reload and preflight, stopping.

See test_pool_unit.py for how these tests work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from fnd.daemon.pool import deaths, supervisor
from fnd.daemon.pool import pool as pool_module
from fnd.daemon.pool.pool import FunctionsBroken, PoolError
from fnd.protocol import messages as m
from tests.daemon.fake_spawner import FakeSpawner, FakeWorker, exit_code, hang
from tests.daemon.pool_harness import Scene, holding, run, until

pytestmark = pytest.mark.unit

CHECK: m.FunctionCheck = {"route": "/f", "file": "/p/f.py", "needs_handler": True}


# -- slots -----------------------------------------------------------------------------------
def _leave_something(fake: FakeSpawner) -> Callable[[FakeWorker, m.Message], None]:
    """A call whose worker dies leaving a process in its slot that resists the first kill."""
    def leave(worker: FakeWorker, invoke: m.Message) -> None:
        fake.leftovers.add(worker.slot)
        fake.stubborn.add(worker.slot)
        worker.exit(exit_code(1))
    return leave


def test_a_slot_with_leftovers_is_killed_and_kept_out_of_use_until_empty(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "_SWEEP_INTERVAL", 0.01)
    fake = FakeSpawner()

    fake.on_invoke = _leave_something(fake)

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


def test_a_slot_has_its_system_v_objects_removed_once_empty_and_before_reuse(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "_SWEEP_INTERVAL", 0.01)
    fake = FakeSpawner()
    spawned_after_removal: list[bool] = []
    spawn = fake.spawn

    async def spawn_checked(slot: int) -> object:
        earlier = sum(w.slot == slot for w in fake.workers)
        if earlier:  # a reuse: one removal per worker the slot had
            spawned_after_removal.append(fake.ipc_removals.count(slot) >= earlier)
        return await spawn(slot)

    fake.spawn = spawn_checked  # type: ignore[method-assign, assignment]

    fake.on_invoke = _leave_something(fake)

    async def body(s: Scene) -> None:
        assert (await s.invoke()).status == 502
        await until(lambda: fake.slot_kills.count(0) >= 2)
        assert 0 not in fake.ipc_removals  # a process may still be in it: not yet
        fake.stubborn.clear()
        await until(lambda: 0 in fake.ipc_removals)
        fake.on_invoke = lambda worker, invoke: worker.exit(exit_code(1))
        for _ in range(3):
            await s.invoke()
        await until(lambda: any(w.slot == 0 for w in fake.workers[1:]))
        assert spawned_after_removal and all(spawned_after_removal)

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
    monkeypatch.setattr(supervisor, "EXIT_STATUS_WAIT", 0.01)  # the death reports, not slots
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
    monkeypatch.setattr(supervisor, "_ZYGOTE_BACKOFF", 0.0001)
    fake = FakeSpawner()

    async def body(s: Scene) -> None:
        fake.start_error, fake.start_failures_left = "no memory", -1
        fake.lose_zygote()
        await until(lambda: bool(s.fatal))
        assert s.fatal == ["zygote cannot be restarted: no memory"]
        assert fake.zygote_starts == 1 + 5

    run(body, fake)


def test_a_zygote_restart_that_fails_once_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "_ZYGOTE_BACKOFF", 0.0001)
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
        with pytest.raises(PoolError, match="^workers not ready within"):
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
                                checks=[CHECK])
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
            problems = await s.pool.preflight([CHECK], timeout=0.05)
            assert problems == [
                ("", "no worker slot came free within 0.05 s to check the functions in")]
            return
        problems = await s.pool.preflight([CHECK], timeout=0.05)
        assert len(problems) == 1 and problems[0][1].startswith(why)
        assert await s.pool.preflight([], timeout=0.05) == []

    run(body, fake)


def test_a_preflight_worker_that_cannot_start_says_why() -> None:
    fake = FakeSpawner()

    async def body(s: Scene) -> None:
        fake.auto_ready = False
        problems = await s.pool.preflight([CHECK], timeout=0.02)
        assert problems == [("", "no worker could start to check the functions: "
                                 "workers not ready within 0 s")]

    run(body, fake)


@pytest.mark.parametrize("size", [1, 2])
def test_a_reload_with_a_preflight_works_with_a_full_pool(size: int) -> None:
    # min = max: the running generation and the preflight's worker hold every slot; the new
    # generation waits for the preflight worker's slot instead of failing.
    fake = FakeSpawner()

    async def body(s: Scene) -> None:
        old = [w for w in fake.live()]
        problems = await s.pool.reload(s.pool.config, {"sources": {}}, timeout=1.0,
                                       checks=[CHECK])
        assert problems == [] and s.pool.generation == 1
        outcome = await s.invoke("new")
        assert (outcome.status, outcome.body) == (200, b"new")
        assert fake.by_pid(outcome_pid(s)) not in old
        await until(lambda: not any(w.alive for w in old))
        assert all(w.slot < 2 * size for w in fake.workers)

    run(body, fake, workers_min=size, workers_max=size)


def outcome_pid(s: Scene) -> int:
    """The pid of the worker the last call ran on (every worker is idle again)."""
    pids = [w["pid"] for w in s.pool.snapshot()["per_worker"] if w["served"]]
    assert len(pids) == 1, pids
    return int(pids[0])


def test_a_reload_that_finds_no_slot_says_so_once() -> None:
    fake = FakeSpawner()

    async def body(s: Scene) -> None:
        taken = s.pool._slots.take()  # the last free slot: held by nothing that will leave
        assert taken is not None
        with pytest.raises(PoolError) as raised:
            await s.pool.reload(s.pool.config, {"sources": {}}, timeout=0.05)
        assert str(raised.value) == ("no worker slot came free within 0.05 s for the new "
                                     "generation")
        assert s.pool.generation == 0 and fake.configs[-1] == {}
        assert (await s.invoke("old")).body == b"old"

    run(body, fake, workers_min=1, workers_max=1)


def test_a_reload_waiting_for_a_slot_ends_when_the_daemon_stops() -> None:
    fake = FakeSpawner()

    async def body(s: Scene) -> None:
        assert s.pool._slots.take() is not None
        reload = asyncio.ensure_future(s.pool.reload(s.pool.config, {}, timeout=5.0))
        await asyncio.sleep(0.01)
        await s.pool.stop(drain_timeout=0)
        with pytest.raises(PoolError, match="no worker slot came free"):
            await reload

    run(body, fake, workers_min=1, workers_max=1)


def test_a_slot_freed_for_a_cancelled_wait_goes_back() -> None:
    fake = FakeSpawner()

    async def body(s: Scene) -> None:
        slots = s.pool._slots
        spare = slots.take()
        assert spare is not None and slots.take() is None
        waiting = asyncio.ensure_future(slots.take_waiting(5.0))
        await asyncio.sleep(0.001)
        slots.give_back(spare)  # handed to the wait, which is cancelled before it resumes
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert slots.take() == spare

    run(body, fake, workers_min=1, workers_max=1)


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
