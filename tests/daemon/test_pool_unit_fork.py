"""The pool on an in-memory spawner: isolated calls forked from a pristine worker.

The protocol (fnd/daemon/pool/fork_worker.py): FORK, the child's FORKED, INVOKE, RESULT and
DONE from the child, REAPED from the worker; then the slot is checked from outside. See
test_pool_unit.py for how these tests work.
"""

from __future__ import annotations

import pytest

from fnd.daemon.pool import deaths
from fnd.daemon.pool import pool as pool_module
from fnd.protocol import messages as m
from tests.daemon.fake_spawner import FakeSpawner, FakeWorker
from tests.daemon.pool_harness import Scene, call, run, until

pytestmark = pytest.mark.unit


def test_every_isolated_call_is_a_new_child_of_the_same_worker() -> None:
    async def body(s: Scene) -> None:
        calls = [call(str(n), isolated=True, stats=s.stats) for n in range(3)]
        for each in calls:
            assert (await s.pool.invoke(each)).status == 200
        parent = s.fake.workers[0]
        children = [each.worker_pid for each in calls]
        assert len(set(children)) == 3 and parent.pid not in children, children
        # After each call the next child is ordered at once, to wait for the next call.
        await until(lambda: [f["t"] for f in parent.received]
                    == [m.FORK, m.INVOKE] * 3 + [m.FORK])
        assert s.fake.group_kills == [] and len(s.fake.workers) == 1
        assert s.fake.ipc_removals == [0, 0, 0]  # the slot's System V objects, per call

    run(body, workers_min=1, workers_max=1)


def test_a_worker_that_ran_a_call_itself_never_forks_one() -> None:
    async def body(s: Scene) -> None:
        await s.invoke("shared")
        used = s.fake.workers[0]
        assert (await s.invoke("alone", isolated=True)).body == b"alone"
        assert [f["t"] for f in used.received] == [m.INVOKE]
        await until(lambda: not used.alive)  # retired to make room for a pristine one

    run(body, workers_min=1, workers_max=1)


def test_a_call_for_the_worker_itself_sends_the_waiting_child_away() -> None:
    async def body(s: Scene) -> None:
        assert (await s.invoke("alone", isolated=True)).body == b"alone"
        parent = s.fake.workers[0]
        await until(lambda: parent.child is not None)  # the next call's child waits
        assert (await s.invoke("shared")).body == b"shared"
        assert [f["t"] for f in parent.received] == [m.FORK, m.INVOKE, m.FORK, m.UNFORK,
                                                     m.INVOKE]
        assert parent.alive and s.fake.group_kills == []

    run(body, workers_min=1, workers_max=1)


def test_files_left_in_scratch_replace_the_worker() -> None:
    fake = FakeSpawner()

    def leave_files(worker: FakeWorker, invoke: m.Message) -> None:
        fake.scratch_files.add(worker.slot)
        worker.answer(invoke)

    fake.on_invoke = leave_files

    async def body(s: Scene) -> None:
        first = fake.workers[0]
        assert (await s.invoke(isolated=True)).status == 200
        await until(lambda: not first.alive)
        assert fake.group_kills == [first.pid]
        assert s.stats.restarts[deaths.ISOLATION] == 0  # planned, not counted

    run(body, fake, workers_min=1, workers_max=1)


def test_a_process_left_in_the_slot_after_reaped_kills_the_worker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "_VERIFY_RETRIES", (0.001,))
    fake = FakeSpawner()
    fake.task_counts[0] = 2  # a setsid grandchild the worker did not see

    async def body(s: Scene) -> None:
        assert (await s.invoke(isolated=True)).status == 200
        await until(lambda: s.stats.restarts[deaths.UNCLEAN] == 1)
        assert fake.group_kills == [fake.workers[0].pid]

    run(body, fake, workers_min=1, workers_max=1)


def test_a_worker_gone_from_its_slot_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one task left is the child (it killed its parent and forged every frame)."""
    fake = FakeSpawner()

    async def body(s: Scene) -> None:
        parent = fake.workers[0]
        monkeypatch.setattr(fake, "running", lambda pid: False)
        assert (await s.invoke(isolated=True)).status == 200
        await until(lambda: s.stats.restarts[deaths.UNCLEAN] == 1)
        assert fake.group_kills == [parent.pid]

    run(body, fake, workers_min=1, workers_max=1)


@pytest.mark.parametrize("attack", ["done_first", "reaped_before_done", "reaped_wrong_pid",
                                    "left"])
def test_frames_out_of_order_kill_the_slot(attack: str) -> None:
    fake = FakeSpawner()

    def hostile(worker: FakeWorker, invoke: m.Message) -> None:
        child = worker.child
        if attack == "done_first":  # function code forges DONE to be given the next call
            worker.send({"t": m.DONE, "id": invoke["id"], "clean": True, "cpu": 0.0, "rss": 0})
        elif attack == "reaped_before_done":
            worker.send({"t": m.REAPED, "pid": child, "status": 9, "left": False})
        elif attack == "reaped_wrong_pid":
            worker.send({"t": m.RESULT, "id": invoke["id"], "status": 200, "headers": [],
                         "body": b"x"})
            worker.send({"t": m.DONE, "id": invoke["id"], "clean": True, "cpu": 0.0, "rss": 0})
            worker.send({"t": m.REAPED, "pid": worker.pid, "status": 0, "left": False})
        else:
            worker.answer(invoke)
        worker.child = None

    async def body(s: Scene) -> None:
        parent = fake.workers[0]
        if attack == "left":
            fake.on_invoke = lambda worker, invoke: (
                worker.send({"t": m.RESULT, "id": invoke["id"], "status": 200, "headers": [],
                             "body": b"x"}),
                worker.send({"t": m.DONE, "id": invoke["id"], "clean": True, "cpu": 0.0,
                             "rss": 0}),
                worker.send({"t": m.REAPED, "pid": worker.child, "status": 0, "left": True}))
        else:
            fake.on_invoke = hostile
        outcome = await s.invoke(isolated=True)
        if attack in ("done_first", "reaped_before_done"):
            assert outcome.status == 502, outcome
        await until(lambda: not parent.alive)
        assert parent.pid in fake.group_kills

    run(body, fake, workers_min=1, workers_max=1)


def _child_known(s: Scene) -> bool:
    """The pool's worker knows its waiting child (FORKED was read)."""
    child = getattr(s.pool.workers.get(0), "_child", None)
    return child is not None and child.pid is not None


def test_a_waiting_child_gets_the_invoke_at_once() -> None:
    async def body(s: Scene) -> None:
        await s.invoke(isolated=True)
        parent = s.fake.workers[0]
        await until(lambda: _child_known(s))
        waiting = parent.child
        second = call("again", isolated=True, stats=s.stats)
        assert (await s.pool.invoke(second)).body == b"again"
        assert second.worker_pid == waiting

    run(body, workers_min=1, workers_max=1)


def test_a_call_for_the_worker_waits_for_its_child_to_be_forked_and_sent_away() -> None:
    fake = FakeSpawner()
    fake.auto_forked = False

    async def body(s: Scene) -> None:
        parent = fake.workers[0]
        first = s.start(say="alone", isolated=True)
        await until(lambda: parent.child is not None)
        parent.send({"t": m.FORKED, "pid": parent.child})
        assert (await first).body == b"alone"
        await until(lambda: parent.child is not None)  # the next child, ordered, not forked
        shared = s.start(say="shared")
        await until(lambda: s.pool.snapshot()["workers"]["busy"] == 1)
        parent.send({"t": m.FORKED, "pid": parent.child})  # now it is sent away (UNFORK)
        assert (await shared).body == b"shared"
        assert [f["t"] for f in parent.received] == [m.FORK, m.INVOKE, m.FORK, m.UNFORK,
                                                     m.INVOKE]

    run(body, fake, workers_min=1, workers_max=1)


@pytest.mark.parametrize("frame", ["result_first", "second_forked", "bad_pid", "second_done",
                                   "child_exits_idle"])
def test_a_broken_fork_protocol_kills_the_worker(frame: str) -> None:
    fake = FakeSpawner()
    fake.auto_forked = frame not in ("result_first", "bad_pid")

    def second_done(worker: FakeWorker, invoke: m.Message) -> None:
        done = {"t": m.DONE, "id": invoke["id"], "clean": True, "cpu": 0.0, "rss": 0}
        worker.send({"t": m.RESULT, "id": invoke["id"], "status": 200, "headers": [],
                     "body": b"x"})
        worker.send(done)
        worker.send(done)

    if frame == "second_done":
        fake.on_invoke = second_done

    async def body(s: Scene) -> None:
        parent = fake.workers[0]
        if frame == "child_exits_idle":  # the waiting child dies though nobody asked it
            await s.invoke(isolated=True)
            await until(lambda: _child_known(s))
            parent.send({"t": m.REAPED, "pid": parent.child, "status": 9, "left": False})
        else:
            task = s.start(isolated=True)
            await until(lambda: parent.child is not None)
            if frame == "result_first":
                parent.send({"t": m.RESULT, "id": "x", "status": 200, "headers": [],
                             "body": b""})
            elif frame == "bad_pid":
                parent.send({"t": m.FORKED, "pid": parent.pid})
            elif frame == "second_forked":
                await until(lambda: _child_known(s))
                parent.send({"t": m.FORKED, "pid": parent.child})
            await task
        await until(lambda: s.stats.restarts[deaths.PROTOCOL] == 1)
        assert not parent.alive

    run(body, fake, workers_min=1, workers_max=1)


def test_a_call_that_cannot_be_encoded_leaves_the_worker_idle() -> None:
    async def body(s: Scene) -> None:
        bad = call(isolated=True, stats=s.stats)
        bad.event = {"x": object()}
        assert (await s.pool.invoke(bad)).status == 500
        assert (await s.invoke("fine", isolated=True)).body == b"fine"
        assert s.fake.group_kills == []

    run(body, workers_min=1, workers_max=1)
