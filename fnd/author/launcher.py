"""Run `fnd serve` in a child process and wait on its log lines: the one launcher.

`fnd invoke`, ``fnd.testing``, fnd's own test harness and its benchmarks all start the real
daemon (zygote, sandboxed workers, time limits, HTTP handling) through :class:`ServeProcess`,
so each sees the daemon exactly as production runs it. The child logs JSON lines on stderr:
to a pipe read on a thread (the default), or to a file read only when asked (benchmarks, where
parsing every invocation line would compete with the load). "ready" (with the listen address)
or "cannot start" (with the reason) ends the wait for start-up.
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
from typing import IO, Any, Protocol

Line = dict[str, Any]
Wrap = Callable[[list[str]], list[str]]


class LaunchError(Exception):
    """`fnd serve` did not start; the message is its reason."""


def _parse(raw: bytes) -> Line:
    text = raw.decode("utf-8", "replace").rstrip("\n")
    try:
        line = json.loads(text)
    except ValueError:
        line = None
    if not isinstance(line, dict):  # a traceback or a console-format line
        line = {"event": "raw", "text": text}
    return line


class Log(Protocol):
    """What a caller waits on: the lines so far, and a wait with a deadline."""

    @property
    def lines(self) -> list[Line]: ...

    def wait_for(self, predicate: Callable[[Line], bool], timeout: float) -> Line | None: ...

    def close(self) -> None: ...


class LogTail:
    """A child's stderr as JSON log lines, read on a thread; wait on them with deadlines."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._lines: list[Line] = []  # every line; non-JSON ones as {"event": "raw", "text": …}
        self._stream = stream
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def lines(self) -> list[Line]:
        return self._lines  # the live list: it grows as the child logs

    def _read(self) -> None:
        for raw in self._stream:
            line = _parse(raw)
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Line], bool], timeout: float) -> Line | None:
        """The first line matching ``predicate``, or None after ``timeout`` or the end."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self._lines if predicate(line)), None)
                remaining = deadline - time.monotonic()
                if found is not None or remaining <= 0 or not self._reader.is_alive():
                    return found
                self._changed.wait(min(remaining, 0.5))

    def close(self) -> None:
        self._reader.join(5)
        self._stream.close()


class FileTail:
    """A child's log file, parsed only when a caller asks (nothing runs while load does)."""

    POLL = 0.05  # the file gives no wake-up; polled with a deadline while someone waits

    def __init__(self, path: Path, alive: Callable[[], bool], offset: int = 0) -> None:
        self.path = path  # read from byte ``offset`` on (a log others wrote to before)
        self._alive = alive
        self._offset = offset
        self._partial = b""
        self._lines: list[Line] = []
        self._lock = threading.Lock()

    @property
    def lines(self) -> list[Line]:
        with self._lock:
            self._catch_up()
            return self._lines

    def _catch_up(self) -> None:
        with open(self.path, "rb") as log:
            log.seek(self._offset)
            data = log.read()
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        self._lines.extend(_parse(raw) for raw in complete)

    def wait_for(self, predicate: Callable[[Line], bool], timeout: float) -> Line | None:
        deadline = time.monotonic() + timeout
        while True:
            running = self._alive()  # read before the file: a final line is not missed
            found = next((line for line in self.lines if predicate(line)), None)
            if found is not None or not running or time.monotonic() >= deadline:
                return found
            time.sleep(self.POLL)

    def close(self) -> None:
        pass  # nothing held open between reads


class ServeProcess:
    """One `fnd serve` child; ``stop()`` (or leaving a ``with`` block) ends it."""

    def __init__(self, project: Path, args: list[str], env: dict[str, str] | None = None,
                 ready_timeout: float | None = 60.0, unix: bool = False, *,
                 folder: Path | None = None, log_file: Path | None = None,
                 wrap: Wrap | None = None, pass_fds: tuple[int, ...] = (),
                 cwd: Path | None = None, new_session: bool = False) -> None:
        """Start `fnd serve PROJECT --log-format json --control FOLDER/control.sock ARGS`.

        ``unix``: listen on FOLDER/http.sock (else ``args`` say where). ``folder``: where the
        sockets go; None makes a private temporary one, removed by ``stop()`` (a given one is
        the caller's). ``log_file``: the child's stderr goes there instead of a pipe.
        ``wrap`` turns the command into another (``setpriv ...``, a shell setting LISTEN_PID).
        ``new_session``: out of the caller's process group (a Ctrl-C there does not reach it).
        ``ready_timeout``: wait that long for "ready" (LaunchError otherwise); None: do not
        wait, call ``wait_ready()`` later.
        """
        self.project = project
        # Never the default control path, which a production daemon on this host may be using.
        self._own_folder = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="fnd-tool-")) if folder is None else folder
        self.control = str(self.folder / "control.sock")
        self.listen = ""
        self.killed = False  # stop() had to SIGKILL it
        where = ["--unix", str(self.folder / "http.sock")] if unix else []
        # -P: never import fnd from the current folder (a checkout); daemon and workers must
        # run the same installed code, which the sandboxed workers are allowed to read.
        command = [sys.executable, "-P", "-m", "fnd.cli", "serve", str(project),
                   "--log-format", "json", "--control", self.control, *where, *args]
        # The child holds its own copy of the file; ours is closed once it has started.
        log_out = None if log_file is None else open(log_file, "wb")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                wrap(command) if wrap else command, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE if log_out is None else log_out,
                env={**os.environ, **(env or {})}, pass_fds=pass_fds, cwd=cwd,
                start_new_session=new_session,
            )
        except BaseException:
            self._remove_folder()
            raise
        finally:
            if log_out is not None:
                log_out.close()
        self.log: Log
        if log_file is not None:
            self.log = FileTail(log_file, lambda: self.process.poll() is None)
        else:
            assert self.process.stderr is not None
            self.log = LogTail(self.process.stderr)
        if ready_timeout is not None:
            try:
                self.wait_ready(ready_timeout)
            except BaseException:
                self.stop()
                raise

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def lines(self) -> list[Line]:
        """Every log line so far; lines that are not JSON as {"event": "raw", "text": …}."""
        return self.log.lines

    def wait_for(self, predicate: Callable[[Line], bool], timeout: float) -> Line | None:
        return self.log.wait_for(predicate, timeout)

    def wait_ready(self, timeout: float = 60.0) -> str:
        """The listen address once "ready" is logged; LaunchError with fnd's reason if not."""
        line = self.log.wait_for(lambda e: e.get("event") in ("ready", "cannot start"), timeout)
        if line is not None and line["event"] == "ready":
            self.listen = str(line["listen"])
            return self.listen
        if line is not None:
            raise LaunchError(str(line.get("reason")))
        tail = [str(e.get("text") or e.get("reason") or e.get("event")) for e in self.lines[-5:]]
        raise LaunchError("fnd serve did not become ready: " + " | ".join(tail))

    def matching(self, predicate: Callable[[Line], bool]) -> list[Line]:
        return [line for line in list(self.lines) if predicate(line)]

    def output_of(self, invocation_id: str) -> list[Line]:
        """The "function output" lines (print, logging) of one invocation so far."""
        return self.matching(lambda line: line.get("event") == "function output"
                             and line.get("invocation_id") == invocation_id)

    def invocation(self, invocation_id: str, timeout: float = 10.0) -> Line | None:
        """The invocation's log line (written once the response has gone out)."""
        return self.wait_for(lambda e: e.get("event") == "invocation"
                             and e.get("invocation_id") == invocation_id, timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, up to ``timeout`` s to drain and exit, then SIGKILL; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.process.kill()
                self.process.wait()
        self.log.close()
        self._remove_folder()
        return self.process.returncode

    def _remove_folder(self) -> None:
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def world_readable_copy(source: Path, prefix: str = "fnd-copy-") -> Path:
    """Copy a project into a new folder in /tmp that the workers' uids can read; the copy.

    Sandboxed workers run as other users and must read the project (a pytest tmp_path or a
    checkout under /root is 0700). The caller removes the copy's parent folder.
    """
    top = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    target = top / source.name
    shutil.copytree(source, target, symlinks=True)
    for path in [top, *top.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    return target
