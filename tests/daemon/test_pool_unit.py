"""The pool's decisions, on an in-memory spawner (tests/daemon/fake_spawner.py): no processes.

Each test plays the workers' side of the pipes and checks what a client or an operator would
see: the call's status and reason, which workers and slots were killed, how many were forked.
The same behaviour with real workers is covered end to end in tests/e2e/. This file: calls,
the queue, deadlines, deaths and frames; test_pool_unit_workers.py: outside checks,
recycling, isolation, starting; test_pool_unit_lifecycle.py: slots, the zygote, reload, stop.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from fnd.daemon import calls
from fnd.daemon.pool import deaths, supervisor, worker_proc
from fnd.daemon.pool import queue as pool_queue
from fnd.daemon.stats import Stats
from fnd.protocol import messages as m
from tests.daemon.fake_spawner import (
    SIGKILLED,
    FakeSpawner,
    FakeWorker,
    echo,
    exit_code,
    hang,
)
from tests.daemon.log_lines import LogLines
from tests.daemon.pool_harness import Scene, call, holding, run, until

pytestmark = pytest.mark.unit


# -- dispatch and the queue ----------------------------------------------------------------
def test_a_call_is_answered_by_a_warm_worker() -> None:
    async def body(s: Scene) -> None:
        assert len(s.fake.workers) == 1  # workers_min, forked at start
        outcome = await s.invoke("hello")
        assert (outcome.status, outcome.body) == (200, b"hello")
        assert s.fake.workers[0].received[0]["event"] == {"say": "hello"}
        await until(lambda: s.stats.outcomes["ok"] == 1)  # the line follows the answer

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


def test_a_freed_worker_takes_the_waiting_call_before_the_line_of_its_last_is_written(
) -> None:
    """After a clean DONE the next call goes out first; the line follows, with every field."""
    fake = FakeSpawner()
    held = holding(fake)
    busy_at_line: list[list[str]] = []
    recorded: list[dict[str, Any]] = []

    class Watching(Stats):
        def record(self, **fields: Any) -> None:
            busy_at_line.append([w.call.id for w in pool.workers.values() if w.call])
            recorded.append(fields)
            super().record(**fields)

    async def body(s: Scene) -> None:
        nonlocal pool
        pool = s.pool
        watching = Watching()
        first_call, second_call = call("a", stats=watching), call("b", stats=watching)
        first = asyncio.ensure_future(s.pool.invoke(first_call))
        second = asyncio.ensure_future(s.pool.invoke(second_call))
        await until(lambda: len(held) == 1 and s.pool.snapshot()["queue"] == 1)
        worker, invoke = held.pop(0)
        worker.answer(invoke, body=b"first")
        assert (await first).body == b"first"
        await until(lambda: watching.outcomes["ok"] == 1)
        assert busy_at_line == [[second_call.id]]  # sent before the first call's line
        await until(lambda: len(held) == 1)
        worker, invoke = held.pop(0)
        worker.answer(invoke, body=b"second")
        assert (await second).body == b"second"
        await until(lambda: watching.outcomes["ok"] == 2)

    pool: Any = None
    run(body, fake, workers_max=1)
    assert [(line["status"], line["outcome"]) for line in recorded] == [(200, "ok")] * 2
    assert all(0 < line["duration"] < 3 and line["cpu"] is not None for line in recorded)


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


@pytest.mark.parametrize(("dev", "hint"), [(True, True), (False, False)])
def test_a_504_in_dev_says_the_handler_returned_without_calling_callback(
    dev: bool, hint: bool,
) -> None:
    fake = FakeSpawner()

    def returned(worker: FakeWorker, invoke: m.Message) -> None:
        worker.send({"t": m.RETURNED, "id": invoke["id"]})  # then no RESULT: the time limit

    fake.on_invoke = returned

    async def body(s: Scene) -> None:
        outcome = await s.invoke(timeout=0.02)
        assert outcome.status == 504
        assert outcome.reason is not None
        assert outcome.reason.startswith("function timed out after 0.02 s")
        assert ("handler returned without calling callback" in outcome.reason) is hint
        assert ("callback(None, response)" in outcome.body.decode()) is hint

    run(body, fake, dev=dev)


def test_a_returned_frame_for_another_call_is_refused() -> None:
    fake = FakeSpawner()

    def forged(worker: FakeWorker, invoke: m.Message) -> None:
        worker.send({"t": m.RETURNED, "id": "someone-else"})

    fake.on_invoke = forged

    async def body(s: Scene) -> None:
        outcome = await s.invoke()
        assert outcome.status == 500 and "invalid frame" in (outcome.reason or "")

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
    monkeypatch.setattr(supervisor, "EXIT_STATUS_WAIT", 0.01)
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


def test_done_before_the_result_is_a_502_and_the_worker_is_killed_at_once() -> None:
    fake = FakeSpawner()
    liars: list[FakeWorker] = []

    def done_first(worker: FakeWorker, invoke: m.Message) -> None:
        if liars:  # the replacement is honest
            echo(worker, invoke)
            return
        liars.append(worker)
        worker.send({"t": m.DONE, "id": invoke["id"], "clean": True, "cpu": 0.0, "rss": 0})

    fake.on_invoke = done_first

    async def body(s: Scene) -> None:
        outcome = await s.invoke()
        assert outcome.status == 502 and outcome.kind == calls.CRASH
        assert outcome.reason == ("function killed: the worker sent DONE before the call's "
                                  "RESULT (a forged frame)")
        assert fake.group_kills == [liars[0].pid] and not liars[0].alive
        # It never sends a late RESULT into the next call: that runs on another worker.
        after = await s.invoke("after")
        assert (after.status, after.body) == (200, b"after")
        await until(lambda: s.stats.restarts[deaths.PROTOCOL] == 1)

    run(body, fake)


def test_a_done_after_a_refused_result_is_not_a_second_violation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    log = LogLines()
    monkeypatch.setattr(worker_proc, "_log", log)
    fake = FakeSpawner()

    def bad_then_done(worker: FakeWorker, invoke: m.Message) -> None:
        worker.send({"t": m.RESULT, "id": invoke["id"], "status": 0, "headers": [], "body": b""})
        worker.send({"t": m.DONE, "id": invoke["id"], "clean": True, "cpu": 0.0, "rss": 0})

    fake.on_invoke = bad_then_done

    async def body(s: Scene) -> None:
        outcome = await s.invoke()
        assert outcome.status == 500 and outcome.reason is not None
        assert outcome.reason.startswith("invalid frame from the worker: status 0")
        assert len(fake.group_kills) == 1
        assert not [line for line in log.lines if line["event"] == "worker broke the protocol"]

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
