"""The edges an author meets first: `fnd init`'s words and files agree, a port in use is named
before any worker starts, a reader that stops early (`| head`) ends the output quietly, and
every answer says ``Server: fnd`` (or the configured value), never Python's and aiohttp's."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.fndserver import FndServer, running

ROOT = Path(__file__).resolve().parents[2]
FND = [sys.executable, "-P", "-m", "fnd.cli"]


def _fnd(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FND, *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          **kwargs)  # type: ignore[call-overload]


# -- fnd init ---------------------------------------------------------------------------


@pytest.fixture
def where() -> Iterator[Path]:
    # World-readable, unlike pytest's tmp_path: sandboxed workers run as other uids.
    top = Path(tempfile.mkdtemp(prefix="fnd-init-", dir="/tmp"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.slow  # the generated project's own pytest run, against a real daemon
def test_init_message_readme_and_gitignore_agree_and_the_printed_command_runs(
        where: Path) -> None:
    target = where / "my app"  # a space: the printed commands must still work when pasted
    done = _fnd("init", str(target))
    assert done.returncode == 0, done.stderr
    tests_line = next(line for line in done.stdout.splitlines() if line.startswith("Tests: "))
    command = tests_line.removeprefix("Tests: ")
    assert command == f"cd {shlex.quote(str(target))} && {shlex.quote(sys.executable)} -m pytest"
    assert "(tests: pytest)" not in done.stdout
    pytest_command = command.split(" && ", 1)[1]
    readme = (target / "README.md").read_text()
    assert pytest_command in readme  # the README says the same command
    assert ".fnd/" in readme
    ignored = (target / ".gitignore").read_text().splitlines()
    assert {".env", ".fnd/"} <= set(ignored)
    # The printed line, run as an author would paste it into a shell.
    run = subprocess.run(["bash", "-c", f"{command} -q -p no:cacheprovider"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed" in run.stdout


# -- a port in use ----------------------------------------------------------------------


def test_a_port_in_use_is_named_before_any_worker_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with running("ops", "--port", str(port), ready=False) as server:
            line = server.wait_for(lambda entry: entry.get("event") == "cannot start")
            assert server.process.wait(30) == 1
    assert line["reason"] == f"cannot listen on 127.0.0.1:{port}: address already in use"
    events = {entry.get("event") for entry in server.lines}
    assert "worker ready" not in events and "ready" not in events


def test_a_metrics_port_in_use_is_named_before_any_worker_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with running("ops", "--metrics-port", str(port), ready=False) as server:
            line = server.wait_for(lambda entry: entry.get("event") == "cannot start")
            assert server.process.wait(30) == 1
    assert line["reason"] == f"cannot listen on 127.0.0.1:{port}: address already in use"
    assert "worker ready" not in {entry.get("event") for entry in server.lines}


# -- a reader that stops early ----------------------------------------------------------


@pytest.fixture(scope="module")
def ops() -> Iterator[FndServer]:
    with running("ops") as fnd:
        yield fnd


def _to_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """``fnd ARGS`` whose stdout is a pipe nobody reads any more: every write meets EPIPE."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([*FND, *args], stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=60, cwd=ROOT)
    finally:
        os.close(write)


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["metrics"]])
def test_a_closed_stdout_ends_quietly_with_the_usual_exit_code(
        ops: FndServer, command: list[str]) -> None:
    usual = _fnd(*command, "--control", ops.control)
    assert usual.returncode == 0 and usual.stdout, usual.stderr
    done = _to_a_closed_pipe(*command, "--control", ops.control)
    assert done.returncode == usual.returncode
    assert done.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored"


def test_status_piped_to_head_exits_0_without_a_traceback(ops: FndServer) -> None:
    script = (f"set -o pipefail; {shlex.join(FND)} status --control "
              f"{shlex.quote(ops.control)} | head -1")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


# -- the Server header ------------------------------------------------------------------


def test_every_answer_says_server_fnd(ops: FndServer) -> None:
    answers = {
        "function": ops.get("/hello"),
        "404": ops.get("/nowhere"),
        "401 unsigned": requests.post(ops.url + "/secure", data={"a": "b"}, timeout=30),
        "405": ops.request("TRACE", "/hello"),
    }
    for what, answer in answers.items():
        assert answer.headers.get("Server") == "fnd", (what, answer.status_code)
    assert answers["function"].status_code == 200 and answers["404"].status_code == 404


def test_an_asset_says_the_configured_server_and_empty_sends_none() -> None:
    with running("assets", "--server-header", "edge") as fnd:
        asset = fnd.get("/style.css")
        assert asset.status_code == 200 and asset.headers["Server"] == "edge"
        assert fnd.get("/hello").headers["Server"] == "edge"
        assert fnd.get("/missing.css").headers["Server"] == "edge"
    toml = 'timeout = 5\nserver_header = ""\n'  # an empty FND_* variable means "unset"
    with running("assets", files={"fnd.toml": toml}) as fnd:
        for path in ("/style.css", "/hello", "/missing.css"):
            assert "Server" not in fnd.get(path).headers, path


def test_a_server_header_with_a_line_break_is_refused() -> None:
    with running("ops", env={"FND_SERVER_HEADER": "fnd\rX-Evil: 1"}, ready=False) as server:
        line = server.wait_for(lambda entry: entry.get("event") == "cannot start")
        assert "server_header must be printable ASCII" in line["reason"]
        assert server.process.wait(30) == 1
