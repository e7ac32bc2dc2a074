"""Callback ends the invocation; leftovers make the worker unclean
(docs/handlers.md#completing-the-invocation)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.worker.harness import Worker


def test_statement_after_callback_does_not_run_but_finally_does(
    worker: Worker, tmp_path: Path
) -> None:
    after, final = tmp_path / "after", tmp_path / "finally"
    outcome = worker.call("after_callback", {"after": str(after), "finally": str(final)})
    assert (outcome.status, outcome.body) == (200, b"done")
    assert not after.exists()
    assert final.exists()
    assert outcome.result["clean"] is True
    assert outcome.done["clean"] is True


def test_result_is_sent_before_the_handler_unwinds(worker: Worker, tmp_path: Path) -> None:
    outcome = worker.call(
        "after_callback", {"after": str(tmp_path / "a"), "finally": str(tmp_path / "f")}
    )
    assert [frame["t"] for frame in outcome.frames] == ["result", "done"]


def test_second_callback_is_ignored_and_logged(worker: Worker, tmp_path: Path) -> None:
    marker = tmp_path / "after_second"
    outcome = worker.call("second_callback", {"after_second": str(marker)})
    assert outcome.body == b"first"
    assert [f["t"] for f in outcome.frames].count("result") == 1
    assert any("callback called again" in line for line in outcome.lines("logging"))
    assert marker.exists()  # the second callback also stopped the handler (finally ran)
    assert outcome.done["clean"] is True


def test_return_style(worker: Worker) -> None:
    outcome = worker.call("return_style")
    assert outcome.body == b'{"style":"return","greeting":"hello"}'
    assert outcome.done["clean"] is True


def test_return_style_none_is_empty_200(worker: Worker) -> None:
    outcome = worker.call("return_none")
    assert (outcome.status, outcome.headers, outcome.body) == (200, [], b"")


def test_async_callback_style(worker: Worker) -> None:
    outcome = worker.call("async_callback")
    assert (outcome.status, outcome.body) == (200, b"async callback")
    assert outcome.done["clean"] is True


def test_async_return_style(worker: Worker) -> None:
    outcome = worker.call("async_return")
    assert (outcome.status, outcome.body) == (201, b'{"style":"async return"}')
    assert outcome.done["clean"] is True


def test_async_task_woken_before_callback_is_cancelled(worker: Worker, tmp_path: Path) -> None:
    resumed, cancelled = tmp_path / "resumed", tmp_path / "cancelled"
    outcome = worker.call("async_cancel", {"resumed": str(resumed), "cancelled": str(cancelled)})
    assert outcome.body == b"answered"
    assert not resumed.exists()
    assert cancelled.exists()  # it unwound through its except/finally
    assert outcome.done["clean"] is True


def test_async_handler_returning_then_task_calls_callback(worker: Worker) -> None:
    outcome = worker.call("async_task_callback")
    assert outcome.body == b"from a task"
    assert outcome.done["clean"] is True


def test_finished_to_thread_job_leaves_the_worker_clean(worker: Worker) -> None:
    outcome = worker.call("async_to_thread")
    assert outcome.body == b'{"from":"thread"}'
    assert outcome.result["clean"] is True
    assert outcome.done["clean"] is True
    assert worker.call("async_to_thread").done["clean"] is True  # and reusable


def test_callback_from_another_thread(worker: Worker, tmp_path: Path) -> None:
    after = tmp_path / "after"
    outcome = worker.call("thread_callback", {"after": str(after)})
    assert (outcome.status, outcome.body) == (200, b"from a thread")
    assert outcome.result["clean"] is True
    assert outcome.done["clean"] is True
    assert not after.exists()  # callback did not return in that thread either
    assert worker.call("respond_value", {"value": "next"}).body == b"next"


def test_thread_left_running_makes_result_unclean(worker: Worker) -> None:
    outcome = worker.call("thread_left")
    assert outcome.body == b"left a thread"
    assert outcome.result["clean"] is False
    assert outcome.done["clean"] is False
    assert "thread" in outcome.done["reason"] and "stuck" in outcome.done["reason"]


def test_child_process_left_running_makes_result_unclean(worker: Worker) -> None:
    outcome = worker.call("child_left")
    assert outcome.body == b"left a child"
    assert outcome.result["clean"] is False
    assert outcome.done["reason"] == "a child process is still running"


def test_daemonised_grandchild_makes_result_unclean(worker: Worker) -> None:
    outcome = worker.call("grandchild_left")
    assert outcome.result["clean"] is False


def test_child_that_exited_leaves_the_worker_clean(worker: Worker) -> None:
    outcome = worker.call("child_reaped")
    assert outcome.body == b"ran a child"
    assert outcome.result["clean"] is True
    assert outcome.done["clean"] is True


def test_done_reports_resources(worker: Worker) -> None:
    done = worker.call("respond_value", {"value": "x"}).done
    assert isinstance(done["cpu"], float) and done["cpu"] >= 0
    assert isinstance(done["rss"], int) and done["rss"] > 1024 * 1024


def test_done_counts_a_reaped_childs_cpu_once(worker: Worker) -> None:
    burned = worker.call("child_cpu").done
    assert burned["cpu"] >= 0.25  # the child's 0.3 s, reaped during the invocation
    after = worker.call("respond_value", {"value": "x"}).done
    assert after["cpu"] < 0.2  # the next call on the same worker does not count it again


def test_handler_returning_without_callback_keeps_the_invocation_open(
    worker: Worker, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    ident = worker.invoke("callback_later", {"fifo": str(fifo)})
    warning = worker.read()  # the handler has returned...
    assert warning["t"] == "log" and "returned a value without calling callback" in warning["line"]
    with open(fifo, "w") as tell:  # ...and only now is callback called, from the thread
        tell.write("answered later")
    outcome = worker.collect(ident)
    assert [f["t"] for f in outcome.frames] == ["result", "done"]
    assert outcome.body == b"answered later"
    assert outcome.result["clean"] is True
    assert outcome.done["clean"] is True
