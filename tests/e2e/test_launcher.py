"""fnd's one launcher (fnd/author/launcher.py) as the benchmarks use it: stderr to a log file,
read only when waited on; start-up failures raise with fnd's reason; its folder goes at stop."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from fnd.author.launcher import LaunchError, ServeProcess
from tests.fndserver import FIXTURES, world_readable_copy


@pytest.fixture
def project() -> Iterator[Path]:
    copy = world_readable_copy(FIXTURES / "ops")
    yield copy
    shutil.rmtree(copy.parent, ignore_errors=True)


def test_a_daemon_logging_to_a_file_is_waited_on_like_a_piped_one(project: Path) -> None:
    log = project.parent / "fnd.log"
    with ServeProcess(project, ["--port", "0"], log_file=log) as daemon:
        assert daemon.listen.startswith("http://127.0.0.1:")
        response = requests.get(daemon.listen + "/hello", timeout=30)
        assert response.status_code == 200 and response.text == "hello"
        line = daemon.invocation(response.headers["X-Fnd-Invocation-Id"], timeout=30)
        assert line is not None and line["status"] == 200
        folder = daemon.folder
    assert daemon.process.returncode == 0 and not daemon.killed
    assert not folder.exists()  # its private folder (the control socket's) is removed
    events = [json.loads(text).get("event") for text in log.read_text().splitlines()]
    assert "stopped" in events  # the log file is the caller's: kept


def test_a_daemon_that_cannot_start_raises_with_the_reason(project: Path) -> None:
    (project / "fnd.toml").write_text("worker_max = 3\n")
    log = project.parent / "fnd.log"
    with pytest.raises(LaunchError, match=r"unknown setting 'worker_max'"):
        ServeProcess(project, ["--port", "0"], log_file=log)
