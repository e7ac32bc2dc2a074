"""A worker that can also serve isolated calls (``isolation = "invocation"``) in forked children.

An isolated call goes only to a *pristine* worker, one that has run no call in its own
process. It gets FORK (no request data); the child it forks says FORKED, and only then is the
INVOKE written, for the child alone to read (worker/fork.py). After each isolated call the
next child is ordered at once, so the next call usually finds it waiting. RESULT and DONE
come from the child; REAPED from the worker once the child is gone, and only then does the
pool check the slot from outside and take the worker back (docs/pool.md#isolation). Any
step out of that order is a broken protocol: the whole slot is killed, the worker replaced.

Other calls go through `WorkerProc` unchanged (a worker that ran one is no longer pristine).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fnd.daemon import calls
from fnd.daemon.calls import Call, text_outcome
from fnd.daemon.pool import deaths
from fnd.daemon.pool.frame_check import FrameError, check_id
from fnd.daemon.pool.frame_check import done as check_done
from fnd.daemon.pool.worker_proc import (
    BUSY,
    IDLE,
    UNENCODABLE,
    CallRefused,
    WorkerProc,
    invoke_frame,
)
from fnd.protocol import ProtocolError, encode
from fnd.protocol import messages as m

if TYPE_CHECKING:
    from fnd.daemon.pool.spawner import Spawner

# Context keys that are per request, not project variables (worker/environ.py): not in FORK.
_PER_REQUEST = frozenset({"PATH", "DOMAIN_NAME"})


class _Child:
    """The worker's child for isolated calls: ordered (FORK sent), then known (FORKED)."""

    __slots__ = ("pid", "invoke", "done", "unforking", "after")

    def __init__(self) -> None:
        self.pid: int | None = None  # from its FORKED
        self.invoke = b""  # a call's INVOKE frame, written once the child said FORKED
        self.done = False  # the call's DONE was seen
        self.unforking = False  # UNFORK sent: the worker serves `after` once it is reaped
        self.after = b""


class ForkingWorker(WorkerProc):
    """A `WorkerProc` that serves isolated calls in forked children.

    After each isolated call the next child is ordered at once (`stand_by`): it is forked
    and waits while the worker is idle, so the next isolated call's INVOKE goes straight to
    it. A call that must run in the worker itself first sends that child away (UNFORK).
    """

    _child: _Child | None = None

    def start_call(self, call: Call) -> None:
        child = self._child
        if not call.isolated and child is None:
            self.pristine = False
            super().start_call(call)
            return
        assert self._cmd is not None and self.state == IDLE
        frame = invoke_frame(call)
        try:
            order = b"" if child is not None else _fork_order(call)
        except UNENCODABLE as exc:
            raise CallRefused(f"the request cannot be sent to a worker: {exc}") from None
        self.state = BUSY
        self.call = call
        self.answered = False
        self.busy_since = time.monotonic()
        if child is None:  # an isolated call, no child waiting: order one
            assert self.pristine
            self._child = child = _Child()
            self._cmd.write(order)
        if not call.isolated:  # the child goes; the worker reads the INVOKE once it is reaped
            self.pristine = False
            child.unforking, child.after = True, frame
            if child.pid is not None:
                self._cmd.write(_UNFORK)
        elif child.pid is not None:
            call.worker_pid = child.pid  # the call's log line names the process that ran it
            self._cmd.write(frame)
        else:
            child.invoke = frame

    def stand_by(self, call: Call) -> None:
        """After an isolated call, once the slot is checked: order the next child (loading
        `call`'s function, if it is not loaded yet), to wait for the next isolated call."""
        if self._cmd is None or self._child is not None or self.leaving:
            return
        try:
            order = _fork_order(call)
        except (ProtocolError, ValueError, TypeError, OverflowError):
            return  # the next isolated call orders its child itself
        self._child = _Child()
        self._cmd.write(order)

    def _handle(self, message: m.Message) -> None:
        child = self._child
        if child is None:
            super()._handle(message)
            return
        kind = message["t"]
        if kind == m.FORKED:
            self._on_forked(message, child)
        elif kind == m.REAPED:
            self._on_reaped(message, child)
        elif kind in (m.RESULT, m.DONE, m.RETURNED) and (child.pid is None or child.unforking):
            raise FrameError(f"{kind} from no call's process")
        else:
            super()._handle(message)

    def _on_forked(self, message: m.Message, child: _Child) -> None:
        pid = message.get("pid")
        if child.pid is not None:
            raise FrameError("a second forked")
        if type(pid) is not int or pid <= 0 or pid == self.pid:
            raise FrameError(f"forked with pid {pid!r}")
        child.pid = pid
        assert self._cmd is not None
        if child.unforking:
            self._cmd.write(_UNFORK)
        elif self.call is not None and child.invoke:
            self.call.worker_pid = pid
            frame, child.invoke = child.invoke, b""
            self._cmd.write(frame)

    def _on_result(self, message: m.Message) -> None:
        if self._child is not None:
            # Threads the call left die with its child: no reason to replace this worker.
            # What processes it left, the check after REAPED sees.
            message["clean"] = True
        super()._on_result(message)

    def _on_done(self, message: m.Message) -> None:
        child = self._child
        if child is None:
            super()._on_done(message)
            return
        call = self.call
        check_id(message, call.id if call is not None else None)
        assert call is not None
        done = check_done(message)
        if not self.answered:
            if self.kill_reason is None:
                self._done_before_result(call)
            return
        if child.done:
            raise FrameError("a second done for one invocation")
        child.done = True
        call.cpu, call.rss = done["cpu"], done["rss"]  # the child's own; not this worker's rss

    def _on_reaped(self, message: m.Message, child: _Child) -> None:
        pid, status, left = message.get("pid"), message.get("status"), message.get("left")
        if pid is None or pid != child.pid or type(status) is not int or type(left) is not bool:
            raise FrameError(f"reaped {pid!r} while the call's process is {child.pid!r}")
        self._child = None
        call = self.call
        if left:
            self.kill("a process the call started is still running", deaths.UNCLEAN)
            return
        if child.unforking:  # the waiting child went unused: the worker takes the call
            assert self._cmd is not None
            self._cmd.write(child.after)
            return
        if call is None:  # a waiting child ended without a call: only a retired worker's may
            if not self.retiring:
                self.kill("the process waiting for an isolated call exited", deaths.PROTOCOL)
            return
        if not child.done:
            # The child died before its DONE (crashed, or os._exit from the function).
            cause, words = deaths.classify(status, False)
            words = words.replace("worker", "the call's process", 1)
            call.resolve(text_outcome(502, calls.CRASH, f"function crashed: {words}"))
            self.kill(words, cause)
            return
        self.served += 1
        self.call = None
        # Still BUSY: the pool checks the slot from outside before it counts as idle.
        self.events.worker_done(self, call, True, None)


_UNFORK = encode({"t": m.UNFORK})


def _fork_order(call: Call) -> bytes:
    """FORK for `call`'s function: no request data, only the project's variables."""
    variables = {key: value for key, value in call.context.items()
                 if type(value) is str and key not in _PER_REQUEST}
    order: m.Fork = {"t": m.FORK, "function": call.function, "context": variables}
    return encode(order)


def forked_slot_problem(spawner: Spawner, worker: WorkerProc, running: bool
                        ) -> tuple[str, str] | None:
    """After an isolated call, once the slot holds one task: (reason, cause) to replace the
    worker, or None when the next call may fork from it. Removes the System V objects of
    the slot's uid, as a slot being emptied has them removed (daemon/sandbox/sysv_ipc.py)."""
    if not running:  # the one task left is not the worker: the call killed it
        return "the worker the call was forked from is gone", deaths.UNCLEAN
    if spawner.scratch_has_files(worker.slot):
        # Emptied with the slot, in a thread, as any leaving worker's: the next call starts
        # with an empty folder (the kill replaces the worker).
        return "the call left files in its scratch folder", deaths.ISOLATION
    spawner.remove_ipc(worker.slot)
    return None
