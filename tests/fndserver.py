"""The test harness's `fnd serve`: fnd's one launcher on a fixture project, plus HTTP helpers.

Fixture projects are copied to a world-readable temp folder: sandboxed workers run as other
uids and must be able to read them (pytest's own tmp_path is 0700).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from fnd.author import launcher
from fnd.author.launcher import LaunchError, Line, ServeProcess, Wrap
from fnd.ctl.client import request as control_request

__all__ = ["FIXTURES", "FndServer", "Line", "running", "until", "world_readable_copy"]

FIXTURES = Path(__file__).parent / "e2e" / "fixtures"
COPY_PREFIX = "fnd-test-"


class Ledger:
    """Every copy and server the harness made, with the test that made it: what is still
    there when the session ends was left behind (tests/conftest.py reports and removes it)."""

    current_test = ""
    copies: list[tuple[str, Path]] = []
    servers: list[tuple[str, FndServer]] = []

    @classmethod
    def left_behind(cls) -> list[tuple[str, str]]:
        """(test, what) for each server still running and each copy still on disk."""
        found = [(test, f"fnd serve pid {server.pid}") for test, server in cls.servers
                 if server.process.poll() is None]
        found += [(test, f"folder {folder}") for test, folder in cls.copies if folder.exists()]
        return found

    @classmethod
    def clean_up(cls) -> None:
        for _, server in cls.servers:
            if server.process.poll() is None:
                ServeProcess.stop(server)
        for _, folder in cls.copies:
            shutil.rmtree(folder, ignore_errors=True)


def world_readable_copy(source: Path) -> Path:
    """Copy a project to /tmp so that a worker uid can read it; returns the copy.

    The caller removes ``copy.parent`` (``running`` does; a test using FndServer directly
    does it in a ``finally``).
    """
    copy = launcher.world_readable_copy(source, COPY_PREFIX)
    Ledger.copies.append((Ledger.current_test, copy.parent))
    return copy


class FndServer(ServeProcess):
    """`fnd serve` on a project copy: port 0 unless ``--unix`` is given, the control socket
    beside the copy, log lines waited on with failures that show the output so far."""

    def __init__(self, project: Path, args: list[str], env: dict[str, str] | None = None,
                 wrap: Wrap | None = None, pass_fds: tuple[int, ...] = ()) -> None:
        """Started, not waited on: call ``wait_ready()`` (``running`` does)."""
        where = [] if "--unix" in args else ["--port", "0"]
        super().__init__(project, [*where, *args], env, ready_timeout=None,
                         folder=project.parent, wrap=wrap, pass_fds=pass_fds)
        Ledger.servers.append((Ledger.current_test, self))

    @property
    def url(self) -> str:
        return self.listen

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

    def wait_ready(self, timeout: float = 60.0) -> str:
        try:
            return super().wait_ready(timeout)
        except LaunchError as exc:
            raise AssertionError(f"fnd did not start: {exc}") from None

    def status(self) -> dict[str, Any]:
        """The daemon's status, as `fnd status --json` gets it from the control socket."""
        return asyncio.run(control_request(self.control, {"cmd": "status"}))

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url + path, timeout=kwargs.pop("timeout", 30),
                                **kwargs)

    def stop(self, timeout: float = 30.0) -> int:
        """The exit status; a daemon that had to be killed fails the test."""
        status = super().stop(timeout)
        assert not self.killed, f"fnd serve did not exit within {timeout} s of SIGTERM"
        return status


def until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll `predicate` (a status query, a pid check) until it holds, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached in {timeout} s: {what or predicate}"
        time.sleep(0.02)  # polling an observable, not synchronising on time


@contextmanager
def running(fixture: str | Path, *args: str, env: dict[str, str] | None = None,
            files: dict[str, str] | None = None, wrap: Wrap | None = None,
            pass_fds: tuple[int, ...] = (), ready: bool = True) -> Iterator[FndServer]:
    """`fnd serve` on a copy of tests/e2e/fixtures/<fixture> (or any folder); stopped after,
    and the copy removed.

    "{dir}" in an argument is replaced by the copy's parent folder (a private temp dir).
    ``ready=False``: yield at once, for a test of a daemon that must refuse to start.
    """
    source = fixture if isinstance(fixture, Path) else FIXTURES / fixture
    project = world_readable_copy(source)
    try:
        for name, text in (files or {}).items():
            (project / name).write_text(text)
            (project / name).chmod(0o644)
        args = tuple(arg.replace("{dir}", str(project.parent)) for arg in args)
        server = FndServer(project, list(args), env, wrap=wrap, pass_fds=pass_fds)
        try:
            if ready:
                server.wait_ready()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(project.parent, ignore_errors=True)
