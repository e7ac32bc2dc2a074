"""Run `fnd serve` in a child process for fnd's own tools and wait until it is ready.

`fnd invoke` and ``fnd.testing`` use the real daemon (zygote, sandboxed workers, time
limits, HTTP handling) rather than a look-alike, so a function behaves in a test exactly as
in production. The child logs JSON lines on stderr; they are read on a thread and kept, and
"ready" (with the listen address) or "cannot start" (with the reason) ends the wait.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

Line = dict[str, Any]


class LaunchError(Exception):
    """`fnd serve` did not start; the message is its reason."""


class LogTail:
    """A child's stderr as JSON log lines, read on a thread; wait on them with deadlines."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[Line] = []  # every line; non-JSON ones as {"event": "raw", "text": …}
        self._stream = stream
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self._stream:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                line = json.loads(text)
            except ValueError:
                line = None
            if not isinstance(line, dict):  # a traceback or a stdlib logging line
                line = {"event": "raw", "text": text}
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Line], bool], timeout: float) -> Line | None:
        """The first line matching ``predicate``, or None after ``timeout`` or the end."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self.lines if predicate(line)), None)
                remaining = deadline - time.monotonic()
                if found is not None or remaining <= 0 or not self._reader.is_alive():
                    return found
                self._changed.wait(min(remaining, 0.5))

    def matching(self, predicate: Callable[[Line], bool]) -> list[Line]:
        with self._changed:
            return [line for line in self.lines if predicate(line)]

    def close(self) -> None:
        self._reader.join(5)
        self._stream.close()


class ServeProcess:
    """One `fnd serve` child; ``stop()`` (or leaving a ``with`` block) ends it."""

    def __init__(self, project: Path, args: list[str], env: dict[str, str] | None = None,
                 ready_timeout: float = 60.0, unix: bool = False) -> None:
        """``unix``: listen on a socket in the private folder (else ``args`` say where)."""
        # A private folder for the control socket (and the listen socket, if unix): never
        # the default control path, which a production daemon on this host may be using.
        self.folder = Path(tempfile.mkdtemp(prefix="fnd-tool-"))
        where = ["--unix", str(self.folder / "http.sock")] if unix else []
        # -P: never import fnd from the current folder (a checkout); daemon and workers must
        # run the same installed code, which the sandboxed workers are allowed to read.
        command = [sys.executable, "-P", "-m", "fnd.cli", "serve", str(project),
                   "--log-format", "json", "--control", str(self.folder / "control.sock"),
                   *where, *args]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
        )
        assert self.process.stderr is not None
        self.log = LogTail(self.process.stderr)
        self.lines = self.log.lines
        try:
            self.listen = self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, predicate: Callable[[Line], bool], timeout: float) -> Line | None:
        return self.log.wait_for(predicate, timeout)

    def _wait_ready(self, timeout: float) -> str:
        line = self.wait_for(lambda e: e.get("event") in ("ready", "cannot start"), timeout)
        if line is not None and line["event"] == "ready":
            return str(line["listen"])
        if line is not None:
            raise LaunchError(str(line.get("reason")))
        tail = [str(e.get("text") or e.get("reason") or e.get("event")) for e in self.lines[-5:]]
        raise LaunchError("fnd serve did not become ready: " + " | ".join(tail))

    def output_of(self, invocation_id: str) -> list[Line]:
        """The "function output" lines (print, logging) of one invocation so far."""
        return self.log.matching(lambda line: line.get("event") == "function output"
                                 and line.get("invocation_id") == invocation_id)

    def invocation(self, invocation_id: str, timeout: float = 10.0) -> Line | None:
        """The invocation's log line (written once the response has gone out)."""
        return self.wait_for(lambda e: e.get("event") == "invocation"
                             and e.get("invocation_id") == invocation_id, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)
