"""SPEC 7.2: print, sys.stdout/stderr and logging arrive as LOG frames with the invocation id."""

from __future__ import annotations

import os
from pathlib import Path

from tests.worker.harness import Worker


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
