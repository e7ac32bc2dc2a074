"""The daemon's handle on one worker process: its pipes, its state, its current call.

A worker's state and the facts about it (pid, times, CPU, why it left) change only here, in
one method per transition; the pool asks and commands (docs/pool.md).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any, Final, Literal, Protocol

from fnd.daemon import calls
from fnd.daemon.calls import Call, Outcome, text_outcome
from fnd.daemon.logs import get_logger
from fnd.daemon.ops.status import WorkerRow
from fnd.daemon.pool import deaths, frame_check
from fnd.daemon.pool.frame_check import FrameError
from fnd.daemon.pool.output_cap import SLACK, OutputCap, Verdict
from fnd.daemon.pool.sizing import Recycling
from fnd.daemon.pool.zygote_client import SpawnedPipes
from fnd.protocol import AsyncFrameReader, ProtocolError, encode
from fnd.protocol import messages as m

WorkerState = Literal["starting", "idle", "busy", "dead"]  # as `fnd status` shows them
STARTING: Final = "starting"
IDLE: Final = "idle"
BUSY: Final = "busy"
DEAD: Final = "dead"
_log = get_logger("fnd.worker")
# Python logging levels of a function's log records -> the daemon's log methods.
_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warning", "ERROR": "error",
           "CRITICAL": "critical"}
_MAX_OUTPUT_LINE = 8192
_NEVER = Recycling()  # no recycling limits


class PoolEvents(Protocol):
    """What a worker tells its pool."""

    def worker_ready(self, worker: WorkerProc) -> None: ...
    def worker_done(
        self, worker: WorkerProc, call: Call, clean: bool, reason: str | None
    ) -> None: ...
    def worker_leaving(self, worker: WorkerProc) -> None: ...
    @property
    def limits(self) -> frame_check.Limits: ...
    def worker_gone(self, worker: WorkerProc) -> None: ...
    def kill_worker(self, worker: WorkerProc) -> None: ...  # its process group and cgroup
    def still_running(self, worker: WorkerProc) -> bool: ...  # its process, not exiting


class CallRefused(Exception):
    """A call that cannot be sent to a worker; the message is the client's 500 reason."""


class _OutputReader(asyncio.Protocol):
    """The worker's fd 1/2: text written below Python's sys.stdout (C code, subprocesses)."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._partial = b""

    def data_received(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > _MAX_OUTPUT_LINE:
            lines.append(self._partial)
            self._partial = b""
        for line in lines:
            self._on_line(line.decode("utf-8", "replace"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._partial:
            self._on_line(self._partial.decode("utf-8", "replace"))


def _pipe_file(loop: asyncio.AbstractEventLoop, fd: int, mode: str) -> Any:
    """The file object a pipe transport is made from.

    uvloop closes the fd itself and then closes the file object too, counting on EBADF. If
    another thread (the cgroup killer, aiohttp's file responses) opens a file in between, it
    gets that fd number and the second close takes it away, and the next pipe or socket made
    reuses it under a transport still polling it: a worker's pipe would read an HTTP request.
    So under uvloop the file object must not own the fd; asyncio's transports close it only
    through the file object.
    """
    owns_fd = not type(loop).__module__.startswith("uvloop")
    return os.fdopen(fd, mode, buffering=0, closefd=owns_fd)


UNENCODABLE = (ProtocolError, ValueError, TypeError, OverflowError)  # what encode() raises


def invoke_frame(call: Call) -> bytes:
    """`call`'s INVOKE frame. CallRefused when the request cannot be put into one."""
    try:
        invoke: m.Invoke = {"t": m.INVOKE, "id": call.id, "function": call.function,
                            "event": call.event, "context": call.context,
                            "timeout": call.timeout, "trace": call.invocation.trace_headers()}
        return encode(invoke)
    except UNENCODABLE as exc:
        raise CallRefused(f"the request cannot be sent to a worker: {exc}") from None


class WorkerProc:
    def __init__(self, events: PoolEvents, slot: int, generation: int,
                 recycling: Recycling = _NEVER, max_output: int = 0) -> None:
        self.events = events
        self.slot = slot
        self.generation = generation
        self.recycling = recycling
        self.pid: int | None = None
        self.state: WorkerState = STARTING
        self.call: Call | None = None
        self.served = 0
        # Has run no call in its own process: isolated calls fork from it (fork_worker.py).
        self.pristine = True
        self.layers: dict[str, str] = {}
        self.failure: str | None = None  # why it could not start, as it or the zygote said
        self.retiring = False
        self.cause: str | None = None  # why it is leaving (daemon.deaths), set once
        self.spawned_at = time.monotonic()
        self.ready_at = 0.0
        self.idle_since = 0.0
        self.busy_since = 0.0
        self.cpu_total = 0.0
        self.rss = 0
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exit_status: asyncio.Future[int] = loop.create_future()
        self._cmd: asyncio.WriteTransport | None = None
        self._res: asyncio.ReadTransport | None = None
        self._out: asyncio.ReadTransport | None = None
        self._kill_reason: str | None = None
        self.answered = False  # a RESULT was accepted for the current call
        self.closed_early = False  # its result pipe closed before the daemon killed it
        self.cpu_mark: float | None = None  # the slot's CPU counter when it last went idle
        # The daemon's own cap on the output it logs per call (daemon/pool/output_cap.py).
        self._output = OutputCap()
        self._max_output = max_output
        self.kill_sent_at = 0.0
        self.preflight: asyncio.Future[list[tuple[str, str]]] | None = None

    async def attach(self, pipes: SpawnedPipes) -> None:
        loop = asyncio.get_running_loop()
        self._cmd, _ = await loop.connect_write_pipe(
            asyncio.Protocol, _pipe_file(loop, pipes.cmd_w, "wb")
        )
        self._res, _ = await loop.connect_read_pipe(
            lambda: AsyncFrameReader(self._on_message, self._on_closed),
            _pipe_file(loop, pipes.res_r, "rb"),
        )
        self._out, _ = await loop.connect_read_pipe(
            lambda: _OutputReader(self._on_output), _pipe_file(loop, pipes.out_r, "rb")
        )
        if self.state == DEAD or self.retiring:
            self.close_pipes()  # it left while its pipes were being set up

    # -- orders -------------------------------------------------------------------------
    def start_call(self, call: Call) -> None:
        """Send `call` to this idle worker. Raises CallRefused, changing nothing, when the
        call cannot be put into a frame: the worker stays idle and only that call fails."""
        assert self._cmd is not None and self.state == IDLE
        frame = invoke_frame(call)
        self.state = BUSY
        self.call = call
        self.answered = False
        self.busy_since = time.monotonic()
        call.worker_pid = self.pid
        self._cmd.write(frame)

    def start_preflight(self, checks: list[m.FunctionCheck], context: dict[str, Any]
                        ) -> asyncio.Future[list[tuple[str, str]]]:
        """Ask this idle worker to load every function; the future gets the problems."""
        assert self._cmd is not None and self.state == IDLE
        preflight: m.Preflight = {"t": m.PREFLIGHT, "functions": checks, "context": context}
        frame = encode(preflight)
        self.state = BUSY
        self.busy_since = time.monotonic()
        self.preflight = asyncio.get_running_loop().create_future()
        self._cmd.write(frame)
        return self.preflight

    def verified_idle(self, cpu: float) -> None:
        """The pool checked after DONE that nothing of the call is left: it may take another.
        `cpu`: the call's CPU seconds, as the pool accepted them."""
        self.cpu_total += cpu
        self.state = IDLE

    def went_idle(self, now: float, cpu: float | None) -> None:
        """It waits for a call from `now` (time.monotonic()); `cpu` is its slot's CPU counter
        then (None: not accounted), so that CPU used while idle can be told."""
        self.idle_since = now
        self.cpu_mark = cpu

    def spawned(self, pid: int) -> None:
        """The zygote made its process; a kill ordered before that is sent again, now that
        there is a process group to kill."""
        self.pid = pid
        if self._kill_reason is not None:
            self.kill(self._kill_reason, self.cause or deaths.STOPPING)

    def fail_start(self, reason: str) -> None:
        """It cannot serve (`reason` as it, the zygote or the pool said): it dies unready."""
        self.failure = reason
        self.kill(f"failed to start: {reason}", deaths.START_FAILED)

    def died_of(self, cause: str) -> None:
        """Why it died, once its exit status explained it (daemon.pool.deaths)."""
        if self.cause is None:
            self.cause = cause

    def recycle_due(self, generation: int, max_rss: int) -> str | None:
        """The cause if it should be replaced rather than take another call, else None:
        an older generation, its recycling limits, or over `max_rss` bytes (0: no limit)."""
        if self.generation != generation:
            return deaths.RELOAD
        limits = self.recycling  # read inline: this runs after every call
        if limits.max_requests and self.served >= limits.max_requests:
            return deaths.MAX_REQUESTS
        if limits.max_age and time.monotonic() - self.spawned_at >= limits.max_age:
            return deaths.MAX_AGE
        if max_rss and self.rss > max_rss:
            return deaths.MAX_RSS
        return None

    def take_call(self) -> Call | None:
        """Hand over the current call (to be answered by whoever takes it), if any."""
        call, self.call = self.call, None
        return call

    def set_exit_status(self, status: int) -> None:
        """Its wait status, once known (-1: no process was made, or nobody will report it)."""
        if not self.exit_status.done():
            self.exit_status.set_result(status)

    def kill(self, reason: str, cause: str) -> None:
        """SIGKILL the worker's process group and its cgroup; the pipes' EOF finishes the rest.

        `reason` is the words (a 502 body may quote them), `cause` the counter (daemon.deaths).
        """
        first = self._kill_reason is None
        if first:
            self._kill_reason = reason
            self.kill_sent_at = time.monotonic()
        self.events.kill_worker(self)
        if first:
            self._leave(cause)
        if self.state != DEAD and self.pid is None and self._cmd is None:
            self._finish("killed before it started")

    def retire(self, cause: str) -> None:
        """Ask an idle worker to leave: closing its command pipe makes it exit cleanly."""
        if self.retiring or self._kill_reason is not None:
            return
        self.retiring = True
        self._leave(cause)
        if self._cmd is not None:
            self._cmd.close()

    def _leave(self, cause: str) -> None:
        if self.cause is None:
            self.cause = cause
        if self.state != DEAD:
            self.events.worker_leaving(self)  # the pool replaces it now, not when it is reaped

    @property
    def kill_reason(self) -> str | None:
        return self._kill_reason

    @property
    def leaving(self) -> bool:
        return self.cause is not None

    # -- what the worker says ------------------------------------------------------------
    def _on_message(self, message: m.Message) -> None:
        try:
            self._handle(message)
        except FrameError as exc:
            self.refuse(str(exc))
        except Exception as exc:  # noqa: BLE001 - whatever a frame provokes ends this worker only
            self.refuse(f"{type(exc).__name__}: {exc}")

    def refuse(self, reason: str) -> None:
        """The worker broke the protocol: its call (if unanswered) fails with 500, it dies."""
        call = self.call
        if call is not None:
            call.resolve(text_outcome(500, calls.ERROR, f"invalid frame from the worker: {reason}"))
        self.kill(f"invalid frame: {reason}", deaths.PROTOCOL)

    def _done_before_result(self, call: Call) -> None:
        """DONE with no RESULT: an honest worker never sends it (worker/invoke.py writes
        RESULT first), so the function wrote it. Its late RESULT would land on the next
        call; the worker dies now and its own call gets 502 (docs/pool.md#one-answer-per-call).
        """
        reason = "the worker sent DONE before the call's RESULT (a forged frame)"
        _log.warning("worker broke the protocol", invocation_id=call.id,
                     function=call.function["name"], worker_pid=self.pid, reason=reason)
        call.resolve(text_outcome(502, calls.CRASH, f"function killed: {reason}"))
        self.kill(reason, deaths.PROTOCOL)

    def _handle(self, message: m.Message) -> None:
        kind = message["t"]
        if kind == m.RESULT:
            self._on_result(message)
        elif kind == m.LOG:
            line, stream, level = frame_check.log(message)
            call = self.call
            self._log_output(line, stream, call.id if call else None, level)
        elif kind == m.RETURNED:  # a claim that only words a dev-mode 504: nothing trusts it
            call = self.call
            frame_check.check_id(message, call.id if call else None)
            if call is not None:
                call.returned = True
        elif kind == m.DONE:
            self._on_done(message)
        elif kind == m.PREFLIGHT_RESULT:
            if self.preflight is None or self.preflight.done():
                raise FrameError("a preflight result nobody asked for")
            self.preflight.set_result(frame_check.preflight(message))
        elif kind == m.READY:
            if self.state != STARTING:
                raise FrameError("a second ready")
            pid, self.layers = frame_check.ready(message)
            if self.pid is None:
                # READY may overtake the zygote's SPAWNED; no user code has run yet, so the
                # pid it carries is the worker's own.
                self.pid = pid
            self.state = IDLE
            self.ready_at = time.monotonic()
            self.events.worker_ready(self)  # may refuse it (missing sandbox layers)
            if self._kill_reason is None and not self.ready.done():
                self.ready.set_result(None)
        elif kind == m.FAILED:
            if self.state != STARTING:
                raise FrameError("failed after ready")
            self.fail_start(frame_check.failed(message))
        else:
            raise FrameError(f"unexpected message {kind!r}")

    def _on_result(self, message: m.Message) -> None:
        call = self.call
        frame_check.check_id(message, call.id if call is not None else None)
        assert call is not None
        if self.answered:
            raise FrameError("a second result for one invocation")
        result = frame_check.result(message, self.events.limits)
        self.answered = True
        if not result["clean"]:
            # Something the invocation started is still alive: it must not outlive the answer.
            self.kill("left threads or processes running", deaths.UNCLEAN)
        error = result["error"]
        outcome = calls.ERROR if error else calls.OK
        call.resolve(Outcome(result["status"], result["headers"], result["body"], outcome, error))

    def _on_done(self, message: m.Message) -> None:
        call = self.call
        frame_check.check_id(message, call.id if call is not None else None)
        assert call is not None
        done = frame_check.done(message)
        if not self.answered:
            if self._kill_reason is None:  # else already dying, e.g. for a refused RESULT
                self._done_before_result(call)
            return
        call.cpu, call.rss = done["cpu"], done["rss"]  # the worker's word; the pool may correct it
        self.rss = done["rss"]
        self.served += 1
        self.call = None
        # Still BUSY: the pool checks from outside that nothing of the call is left before
        # it counts the worker idle (and until then the call's deadline stays armed).
        self.events.worker_done(self, call, done["clean"], done["reason"])

    def _on_output(self, line: str) -> None:
        call = self.call
        self._log_output(line, "fd", call.id if call else None, None)

    def _log_output(self, line: str, stream: str, invocation_id: Any, level: Any) -> None:
        """One line a function wrote, at its own level (logging) or its stream's (stderr);
        capped per invocation (daemon/pool/output_cap.py)."""
        call = self.call
        verdict = self._output.admit(call.id if call else None, line, self._max_output)
        if verdict is not Verdict.LOG:
            if verdict is Verdict.TRUNCATE:
                _log.warning("function output truncated", invocation_id=call.id if call else None,
                             worker_pid=self.pid, limit=self._max_output + SLACK,
                             reason="more output than max_output for this invocation: the rest "
                                    "is not logged")
            return
        method = _LEVELS.get(str(level).upper()) if level else None
        log = getattr(_log, method or ("warning" if stream == "stderr" else "info"))
        log(
            "function output",
            line=line,
            stream=stream,
            invocation_id=invocation_id,
            function=call.function["name"] if call else None,
            worker_pid=self.pid,
        )

    def _on_closed(self, exc: Exception | None) -> None:
        if exc is not None and isinstance(exc, ProtocolError):
            self.refuse(str(exc))
        elif self._kill_reason is None and not self.retiring:
            # The result pipe closed on its own: the worker died, or its code closed the pipe
            # and runs on. Either way nothing of it may keep running (docs/security.md).
            self.closed_early = self.pid is not None and self.events.still_running(self)
            self.events.kill_worker(self)
        self._finish(self._kill_reason)

    def _finish(self, reason: str | None) -> None:
        if self.state == DEAD:
            return
        self.state = DEAD
        if self._cmd is not None:
            self._cmd.close()
        if self.preflight is not None and not self.preflight.done():
            self.preflight.set_exception(RuntimeError(reason or "worker exited"))
            self.preflight.exception()  # retrieved: the pool reports it
        if not self.ready.done():
            self.ready.set_exception(
                RuntimeError(self.failure or reason or "worker exited before it was ready")
            )
            self.ready.exception()  # retrieved: a failed start is reported by the pool
        self.events.worker_gone(self)

    def close_pipes(self) -> None:
        for transport in (self._cmd, self._res, self._out):
            if transport is not None:
                transport.close()

    def snapshot(self) -> WorkerRow:
        call = self.call
        now = time.monotonic()
        return {
            "pid": self.pid,
            "slot": self.slot,
            "state": self.state,
            "leaving": self.cause,
            "generation": self.generation,
            "function": call.function["name"] if call else None,
            "invocation": call.id if call else None,
            "busy_for": round(now - self.busy_since, 3) if call else None,
            "idle_for": round(now - self.idle_since, 3) if self.state == IDLE else None,
            "served": self.served,
            "rss": self.rss or None,
            "cpu": round(self.cpu_total, 3),
            "layers": self.layers,
        }
