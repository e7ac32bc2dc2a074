"""Everything a worker writes: protocol frames on the result fd, user output as LOG frames.

User code never touches the result fd through Python: ``sys.stdout``/``sys.stderr`` and the
root logging handler turn its output into LOG frames, written under the same lock as every
other frame, so a ``print`` from any thread can never split or corrupt a frame. fds 1 and 2
stay the daemon's plain-text capture pipe for output that bypasses Python (C code, children).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from typing import Any

from fnd.protocol import messages as m
from fnd.protocol.frames import write_frame
from fnd.protocol.messages import describe_limit, line_cost

# A line without a newline is cut into LOG frames of this size, so one runaway write can
# neither grow the worker's memory without bound nor exceed the frame limit.
LOG_CHUNK = 64 * 1024
EXIT_DAEMON_GONE = 70

class Channel:
    """The result fd, shared by all threads; knows the invocation that output belongs to.

    Output is capped per invocation at ``max_output`` bytes (0: no cap): what comes after is
    dropped, and when the invocation ends one warning says how much.
    """

    def __init__(self, fd: int, max_output: int = 0) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._detached = False
        self._invocation_id: str | None = None
        self.max_output = max_output
        self._budget_lock = threading.Lock()
        self._used = 0  # bytes of output sent for the current invocation (or gap between them)
        self._over = 0  # bytes dropped

    @property
    def invocation_id(self) -> str | None:
        return self._invocation_id

    @invocation_id.setter
    def invocation_id(self, value: str | None) -> None:
        """A new invocation (or its end): report what was dropped, start a fresh count."""
        if value == self._invocation_id:
            return
        with self._budget_lock:
            over, self._used, self._over = self._over, 0, 0
        if over:
            line = (f"output truncated: {over} bytes over the {describe_limit(self.max_output)} "
                    "limit for this invocation")
            note: m.Log = {"t": m.LOG, "id": self._invocation_id, "stream": "fnd",
                           "level": "WARNING", "line": line}
            self.send(note)
        self._invocation_id = value

    def send(self, message: m.FromWorker) -> None:
        if self._detached:
            # A process forked by user code: the protocol is the parent's, never ours.
            if message["t"] == m.LOG:
                write_plain(2, message["line"] + "\n")
            return
        with self._lock:
            try:
                write_frame(self._fd, message)
            except OSError:
                # The daemon is gone or closed our pipe: nobody is left to serve.
                os._exit(EXIT_DAEMON_GONE)

    def log(self, stream: str, level: str, line: str) -> None:
        if len(line) > LOG_CHUNK:  # e.g. logging.info(<megabytes>): keep the frame bounded
            line = f"{line[:LOG_CHUNK]}… [{len(line) - LOG_CHUNK} characters cut]"
        if self.max_output and not self._within_budget(line_cost(line)):
            return
        frame: m.Log = {"t": m.LOG, "id": self.invocation_id, "stream": stream, "level": level,
                        "line": line}
        self.send(frame)

    def _within_budget(self, cost: int) -> bool:
        with self._budget_lock:
            if self._over or self._used + cost > self.max_output:
                self._over += cost
                return False
            self._used += cost
            return True

    def detach_after_fork(self, *fds: int) -> None:
        """In a child forked by user code: drop the protocol fds, log as plain text."""
        self._detached = True
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        self._budget_lock = threading.Lock()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def write_plain(fd: int, text: str) -> None:
    """Best-effort text straight to an fd (the capture pipe), for when frames are not an option."""
    data = text.encode("utf-8", "backslashreplace")
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass


class _LineSink(io.RawIOBase):
    """Binary sink under a TextIOWrapper: one LOG frame per line written.

    Partial lines are kept per thread: ``print`` writes the text and the newline separately,
    and threads printing at once must still produce whole, unmixed lines.
    """

    def __init__(self, channel: Channel, stream: str, level: str, fd: int) -> None:
        super().__init__()
        self._channel = channel
        self._stream = stream
        self._level = level
        self._fd = fd
        self._pending: dict[int, bytearray] = {}
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        # subprocess(stdout=sys.stdout) and faulthandler get the daemon's capture pipe.
        return self._fd

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        with self._lock:
            pending = self._pending.setdefault(threading.get_ident(), bytearray())
            pending += chunk
            start = 0
            while True:
                end = pending.find(b"\n", start, start + LOG_CHUNK + 1)
                if end >= 0:
                    self._emit(bytes(pending[start:end]))
                    start = end + 1
                elif len(pending) - start > LOG_CHUNK:
                    self._emit(bytes(pending[start : start + LOG_CHUNK]))
                    start += LOG_CHUNK
                else:
                    break
            del pending[:start]
        return len(chunk)

    def flush_partial(self) -> None:
        """Send trailing text that has no newline yet (end of an invocation)."""
        with self._lock:
            for pending in self._pending.values():
                if pending:
                    self._emit(bytes(pending))
            self._pending.clear()

    def _emit(self, line: bytes) -> None:
        self._channel.log(self._stream, self._level, line.decode("utf-8", "replace"))

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._pending.clear()


class _LogHandler(logging.Handler):
    """Root logging handler: one LOG frame per record, with its level."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self._channel = channel

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.name != "root":
            text = f"{record.name}: {text}"
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + record.stack_info
        return text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._channel.log("logging", record.levelname, self.format(record))
        except Exception:
            self.handleError(record)


def set_log_levels() -> None:
    """Levels for function logging. The zygote calls this before forking, so a worker's own
    call finds them set: setLevel clears every logger's cache (~0.1 ms with the runtime's
    hundreds of loggers), which each re-forked worker would pay again."""
    levels = (
        ("", logging.INFO),  # Python's default (WARNING) would drop a function's logging.info()
        ("twilio", logging.WARNING),  # twilio logs every API request at INFO: not for functions
    )
    for name, level in levels:
        logger = logging.getLogger(name)
        if logger.level != level:
            logger.setLevel(level)


class Output:
    """The installed stdout/stderr/logging capture of this worker."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._sinks = [
            _LineSink(channel, "stdout", "INFO", 1),
            _LineSink(channel, "stderr", "ERROR", 2),
        ]
        # Set by worker/fork.py around its own fork: that child serves a call and keeps the
        # protocol fds (it closes the command pipe itself, once it has read its INVOKE).
        self.forking_call = False

    def install(self, protocol_fds: tuple[int, ...]) -> None:
        sys.stdout, sys.stderr = (_text_stream(sink) for sink in self._sinks)
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(_LogHandler(self.channel))
        set_log_levels()
        os.register_at_fork(after_in_child=lambda: self._after_fork(protocol_fds))

    def flush(self) -> None:
        """Push out partial lines so they precede the frame about to be written."""
        for stream in (sys.stdout, sys.stderr):
            # OSError/ValueError: user code closed or replaced it; nothing of ours to flush.
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        for sink in self._sinks:
            sink.flush_partial()

    def _after_fork(self, protocol_fds: tuple[int, ...]) -> None:
        for sink in self._sinks:
            sink.reset_after_fork()
        if self.forking_call:
            self.forking_call = False  # a fork by the call's own code detaches, as usual
            return
        self.channel.detach_after_fork(*protocol_fds)


def _text_stream(sink: _LineSink) -> io.TextIOWrapper:
    # write_through: every write reaches the sink at once; the sink does the line splitting.
    return io.TextIOWrapper(
        sink,  # type: ignore[arg-type]
        encoding="utf-8",
        errors="backslashreplace",
        write_through=True,
    )
