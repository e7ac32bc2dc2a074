"""Start the real `fnd serve` as a subprocess on a fixture project, and wait on its log lines.

Fixture projects are copied to a world-readable temp folder: sandboxed workers run as other
uids and must be able to read them (pytest's own tmp_path is 0700).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from fnd.author.launcher import Line, LogTail
from fnd.ctl.client import request as control_request

FIXTURES = Path(__file__).parent / "e2e" / "fixtures"


def world_readable_copy(source: Path) -> Path:
    """Copy a project to /tmp so that a worker uid can read it; returns the copy."""
    top = Path(tempfile.mkdtemp(prefix="fnd-test-", dir="/tmp"))
    target = top / source.name
    shutil.copytree(source, target, symlinks=True)
    for path in [top, *top.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


class FndServer:
    def __init__(
        self,
        project: Path,
        args: list[str],
        env: dict[str, str] | None = None,
        wrap: Callable[[list[str]], list[str]] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        """`wrap` turns the fnd command into another (e.g. a shell that sets LISTEN_PID)."""
        self.project = project
        self.control = str(project.parent / "control.sock")
        where = [] if "--unix" in args else ["--port", "0"]
        # -P: run the installed fnd (what scripts/test just installed), as a user's `fnd` does;
        # the checkout may not be readable by the sandboxed workers' uids.
        command = [sys.executable, "-P", "-m", "fnd.cli", "serve", str(project), *where,
                   "--log-format", "json", "--control", self.control, *args]
        full_env = {**os.environ, **(env or {})}
        self.process = subprocess.Popen(
            wrap(command) if wrap else command, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=full_env, pass_fds=pass_fds,
        )
        assert self.process.stderr is not None
        self.log = LogTail(self.process.stderr)
        self.lines: list[Line] = self.log.lines
        self.url = ""

    def wait_for(self, predicate: Callable[[Line], bool], timeout: float = 30.0) -> Line:
        """The first log line matching `predicate`, waiting up to `timeout` seconds for it."""
        found = self.log.wait_for(predicate, timeout)
        if found is None:
            shown = [str(line.get("text") or line) for line in self.lines[-40:]]
            raise AssertionError("log line not seen; output so far:\n" + "\n".join(shown))
        return found

    def invocation(self, invocation_id: str, timeout: float = 30.0) -> Line:
        return self.wait_for(
            lambda line: line.get("event") == "invocation"
            and line.get("invocation_id") == invocation_id, timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        ready = self.wait_for(lambda line: line.get("event") in ("ready", "cannot start"), timeout)
        if ready["event"] != "ready":
            raise AssertionError(f"fnd did not start: {ready.get('reason')}")
        self.url = ready["listen"]

    def status(self) -> dict[str, Any]:
        """The daemon's status, as `fnd status --json` gets it from the control socket."""
        return asyncio.run(control_request(self.control, {"cmd": "status"}))

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url + path, timeout=kwargs.pop("timeout", 30),
                                **kwargs)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self.log.close()


def until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll `predicate` (a status query, a pid check) until it holds, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached in {timeout} s: {what or predicate}"
        time.sleep(0.02)  # polling an observable, not synchronising on time


@contextmanager
def running(fixture: str | Path, *args: str, env: dict[str, str] | None = None,
            files: dict[str, str] | None = None,
            wrap: Callable[[list[str]], list[str]] | None = None,
            pass_fds: tuple[int, ...] = ()) -> Iterator[FndServer]:
    """`fnd serve` on a copy of tests/e2e/fixtures/<fixture> (or any folder); stopped after.

    "{dir}" in an argument is replaced by the copy's parent folder (a private temp dir).
    """
    source = fixture if isinstance(fixture, Path) else FIXTURES / fixture
    project = world_readable_copy(source)
    for name, text in (files or {}).items():
        (project / name).write_text(text)
        (project / name).chmod(0o644)
    args = tuple(arg.replace("{dir}", str(project.parent)) for arg in args)
    server = FndServer(project, list(args), env, wrap=wrap, pass_fds=pass_fds)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        shutil.rmtree(project.parent, ignore_errors=True)
