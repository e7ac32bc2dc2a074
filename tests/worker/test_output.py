"""print, sys.stdout/stderr and logging arrive as LOG frames with the invocation id
(docs/handlers.md#output-and-logs)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.worker.harness import Outcome, Worker


def test_output_arrives_as_log_frames_with_the_invocation_id(worker: Worker) -> None:
    outcome = worker.call("output")
    ident = outcome.result["id"]
    logs = [(f["id"], f["stream"], f["level"], f["line"]) for f in outcome.logs]
    assert logs == [
        (ident, "stdout", "INFO", "loaded"),
        (ident, "stdout", "INFO", "to stdout"),
        (ident, "stderr", "ERROR", "to stderr"),
        (ident, "logging", "WARNING", "fixture: to logging"),
        (ident, "logging", "INFO", "root info"),
        (ident, "stdout", "INFO", "no newline"),  # a partial line is sent before RESULT
    ]
    # Everything printed before callback precedes the RESULT.
    assert [f["t"] for f in outcome.frames] == ["log"] * 6 + ["result", "done"]


def test_bootstrap_output_only_once(worker: Worker) -> None:
    worker.call("output")
    assert "loaded" not in worker.call("output").lines()


def test_concurrent_and_huge_output_never_corrupts_the_protocol(worker: Worker) -> None:
    outcome = worker.call("output_flood")
    assert outcome.body == b"flooded"
    lines = outcome.lines("stdout")
    for n in range(4):
        assert [line for line in lines if line.startswith(f"thread {n} ")] == [
            f"thread {n} line {i}" for i in range(200)
        ]
    huge = [line for line in lines if line.startswith("x")]
    assert "".join(huge) == "x" * 150_000
    assert max(len(line) for line in huge) == 64 * 1024  # cut into bounded frames


def test_output_outside_an_invocation_has_no_id(worker: Worker, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    worker.call("print_later", {"fifo": str(fifo)})
    with open(fifo, "w") as tell:
        tell.write("go")
    frame = worker.read()
    assert frame == {
        "t": "log",
        "id": None,
        "stream": "stdout",
        "level": "INFO",
        "line": "printed after the invocation",
    }


def test_output_bypassing_python_goes_to_the_plain_pipe(worker: Worker) -> None:
    outcome = worker.call("raw_fd_output")
    assert outcome.body == b"ok"
    assert outcome.logs == []
    plain = worker.plain()
    assert "raw fd 1\n" in plain
    assert "from a child\n" in plain
    assert "from a forked child\n" in plain  # a fork's print never writes frames
    assert worker.call("respond_value", {"value": "intact"}).body == b"intact"


# --- max_output: output per invocation is capped in the worker ----------------------------------


def _capped(outcome: Outcome) -> tuple[list[str], list[dict[str, Any]]]:
    notes = [f for f in outcome.logs if f["stream"] == "fnd"]
    return [f["line"] for f in outcome.logs if f["stream"] != "fnd"], notes


def test_output_beyond_max_output_is_dropped_with_one_warning(
    make_worker: Callable[..., Worker],
) -> None:
    worker = make_worker(max_output=1000)
    outcome = worker.call("print_lines", {"width": 99, "count": 30})
    lines, notes = _capped(outcome)
    assert lines == [f"{n:04d}".ljust(99, "x") for n in range(10)]  # 10 x (99 + newline)
    assert notes == [{"t": "log", "id": outcome.result["id"], "stream": "fnd",
                      "level": "WARNING", "line": "output truncated: 2000 bytes over the "
                      "1000 bytes limit for this invocation"}]
    # The note closes the invocation: after RESULT, before DONE.
    assert [f["t"] for f in outcome.frames][-3:] == ["result", "log", "done"]


def test_the_count_starts_again_with_each_invocation(make_worker: Callable[..., Worker]) -> None:
    worker = make_worker(max_output=1000)
    for _ in range(2):
        lines, notes = _capped(worker.call("print_lines", {"width": 99, "count": 12}))
        assert len(lines) == 10
        assert [n["line"] for n in notes] == [
            "output truncated: 200 bytes over the 1000 bytes limit for this invocation"]
    lines, notes = _capped(worker.call("print_lines", {"width": 99, "count": 3}))
    assert (len(lines), notes) == (3, [])


def test_logging_and_short_lines_count_too(make_worker: Callable[..., Worker]) -> None:
    worker = make_worker(max_output=1000)
    lines, notes = _capped(worker.call("print_lines", {"via": "logging", "width": 5, "count": 25}))
    assert len(lines) == 10  # a line counts at least 100 bytes: a log entry each
    assert "1500 bytes over" in notes[0]["line"]
    lines, notes = _capped(worker.call("print_lines", {"width": 0, "count": 25}))
    assert (lines, len(notes)) == ([""] * 10, 1)


def test_the_default_cap_is_1_mib(worker: Worker) -> None:
    lines, notes = _capped(worker.call("print_lines", {"width": 1023, "count": 1100}))
    assert len(lines) == 1024
    assert [n["line"] for n in notes] == [
        f"output truncated: {76 * 1024} bytes over the 1 MiB limit for this invocation"]


def test_max_output_0_is_no_cap(make_worker: Callable[..., Worker]) -> None:
    lines, notes = _capped(make_worker(max_output=0).call("print_lines", {"count": 2000}))
    assert (len(lines), notes) == (2000, [])
