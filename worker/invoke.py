"""One invocation: load the function, run the handler, RESULT at once, then DONE.

``Invoker`` is what the worker's loop keeps between invocations (the shared services, the
CPU clock, the call running now); ``RunningCall`` is one invocation from INVOKE to DONE.

What completes an invocation: docs/handlers.md#completing-the-invocation.

RESULT is written the moment the invocation completes (callback, a return-style handler
returning, or an uncaught exception), from whichever thread completes it; its ``clean`` flag
says whether anything the invocation started can still run. DONE follows once the handler
has unwound, with the resources used and whether the worker can be reused.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import resource
import threading
import time
from dataclasses import dataclass
from typing import NoReturn

from fnd.protocol import messages as m
from fnd.worker.aio import AsyncRun, CallbackDone
from fnd.worker.context import Context
from fnd.worker.environ import Environment
from fnd.worker.leftovers import leftover_reason
from fnd.worker.loader import FunctionError, Loader, Style
from fnd.worker.output import Channel, Output
from fnd.worker.received_config import ReceivedConfig
from fnd.worker.runtime import RuntimeAPI
from fnd.worker.serialize import (
    Reply,
    describe,
    error_reply,
    format_traceback,
    reply_for,
    text_reply,
)


@dataclass(frozen=True)
class Services:
    """What every invocation of this worker shares."""

    channel: Channel
    output: Output
    settings: ReceivedConfig
    loader: Loader
    runtime: RuntimeAPI
    environment: Environment


_NO_RESPONSE = "the function ended without a response"


class Invoker:
    """What outlives one invocation: held by the worker's loop, one per worker process."""

    def __init__(self, services: Services, clear_refs: int | None) -> None:
        self.services = services
        self.clock = CpuClock()
        self.clock.watch_peaks(clear_refs)
        self.current: RunningCall | None = None  # one invocation at a time per worker

    def thread_excepthook(self, args: threading.ExceptHookArgs) -> None:
        """An uncaught exception in a thread before the response is a 500, as in the
        handler (installed as ``threading.excepthook``)."""
        exc = args.exc_value
        if isinstance(exc, CallbackDone):
            return  # that thread called callback: ending it was the point
        call = self.current
        if call is not None and isinstance(exc, Exception) and not call.finished.is_set():
            name = args.thread.name if args.thread is not None else "?"
            call.fail(exc, f"thread {name!r} raised")
            return
        threading.__excepthook__(args)


class RunningCall:
    """One invocation inside the worker (the daemon's side of it is ``daemon/calls.py``)."""

    def __init__(self, message: m.Invoke, invoker: Invoker) -> None:
        self._invoker = invoker
        self._s = services = invoker.services
        self.id = message["id"]
        self._function = message["function"]
        self._event = message["event"]
        self._values = message["context"]
        self.context = Context(self._values, services.settings.twilio_api_base_url,
                               message["trace"])
        self.deadline = time.monotonic() + float(message["timeout"])
        self.finished = threading.Event()  # set once RESULT is written
        self._lock = threading.Lock()
        self._home = threading.current_thread()
        self._caller: threading.Thread | None = None  # another thread that completed it
        self._unclean: str | None = None  # why the worker must not be reused
        self.aio: AsyncRun | None = None

    def run(self) -> None:
        """The whole invocation, on the worker's main thread; returns after DONE."""
        s = self._s
        invoker = self._invoker
        clock = invoker.clock
        started = clock.start()
        s.channel.invocation_id = self.id
        s.runtime.bind(self.context)
        s.environment.apply(self._values)
        invoker.current = self
        try:
            reason = self._execute()
            if not self.finished.is_set():  # unreachable by design: never leave the daemon waiting
                self.complete(text_reply(500, _NO_RESPONSE, reason=_NO_RESPONSE))
            reason = self._unclean or reason or self._settle()
            s.output.flush()
            # Cleared before DONE, not after: output from a leftover thread once the daemon
            # has DONE must not be tagged with this (finished) invocation.
            s.channel.invocation_id = None
            done: m.Done = {
                "t": m.DONE,
                "id": self.id,
                "clean": reason is None,
                "reason": reason,
                "cpu": round(clock.stop() - started, 6),
                "rss": clock.peak_rss,
            }
            s.channel.send(done)
        finally:
            invoker.current = None
            s.runtime.bind(None)
            s.channel.invocation_id = None

    def _execute(self) -> str | None:
        """Run the handler until it responded; the reason if its asyncio tasks did not end."""
        s = self._s
        try:
            handler, style = s.loader.handler(self._function["name"], self._function["file"])
        except FunctionError as exc:
            self._log_exception(str(exc), exc.__cause__)
            public = f"{exc.public} (invocation {self.id})"
            self.complete(error_reply(str(exc), exc.__cause__, s.settings, str(exc), public))
            return None
        callback_style = style is Style.CALLBACK
        args = (
            (self.context, self._event, self.callback)
            if callback_style
            else (self.context, self._event)
        )
        try:
            value = handler(*args)
            if inspect.isawaitable(value):
                self.aio = AsyncRun(self, callback_style)
                value = self.aio.run(value)
            if self.finished.is_set():
                pass
            elif not callback_style:
                self.complete(reply_for(value, s.settings))
            else:
                # Open until callback (maybe from another thread) or the time limit.
                self.note_ignored_return(value)
                if s.settings.dev:  # so that a 504 in dev can say the handler returned
                    returned: m.Returned = {"t": m.RETURNED, "id": self.id}
                    s.channel.send(returned)
                self.finished.wait()
        except CallbackDone:
            pass
        except BaseException as exc:  # noqa: B036 - SystemExit in a handler is a 500 too
            self.fail(exc, "handler raised")
        finally:
            reason = self.aio.close(self.deadline) if self.aio is not None else None
        return reason

    def callback(self, error: object = None, response: object = None) -> NoReturn:
        """``callback(error=None, response=None)``: respond now; never returns."""
        if not self.finished.is_set():
            if error is not None:
                text = describe(error)
                if isinstance(error, BaseException) and error.__traceback__ is not None:
                    self._log_exception(f"callback(error): {text}", error)
                # The author passed it: it is the answer, an exception too ("a HTTP 500
                # response with the provided payload"). Only *raised* exceptions are hidden.
                reply = error_reply(text, error, self._s.settings, f"callback(error): {text}")
            else:
                reply = reply_for(response, self._s.settings)
            if self.complete(reply):
                raise CallbackDone
        self._s.channel.log(
            "logging", "WARNING", "callback called again after the response was sent; ignored"
        )
        raise CallbackDone

    def complete(self, reply: Reply, unclean: str | None = None) -> bool:
        """Write RESULT unless already written; False if this call lost the race."""
        with self._lock:
            if self.finished.is_set():
                return False
            current = threading.current_thread()
            ignore, skip = 0, frozenset[int]()
            if current is not self._home:
                # The calling thread is about to unwind (CallbackDone); it is joined later.
                self._caller = current
                ignore, skip = 1, frozenset({current.ident or 0})
            if self.aio is not None:
                ignore += self.aio.idle_threads()
            self._unclean = unclean or leftover_reason(ignore, skip)
            self._s.output.flush()
            result: m.Result = {
                "t": m.RESULT,
                "id": self.id,
                "status": reply.status,
                "headers": reply.headers,  # msgpack writes each pair as an array
                "body": reply.body,
                "clean": self._unclean is None,
                "error": reply.reason if reply.status >= 500 else None,
            }
            self._s.channel.send(result)
            self.finished.set()
        if self.aio is not None:
            self.aio.responded()
        if reply.reason and reply.status < 500:
            self._s.channel.log("logging", "WARNING", reply.reason)
        return True

    def fail(self, exc: BaseException, prefix: str) -> None:
        """An uncaught exception: a 500 naming it, traceback to the log."""
        text = describe(exc)
        late = " after the response was sent" if self.finished.is_set() else ""
        self._log_exception(f"{prefix} {text}{late}", exc)
        # After a MemoryError the worker's state is suspect: replace it.
        unclean = "MemoryError in the handler" if isinstance(exc, MemoryError) else None
        reply = error_reply(text, exc, self._s.settings, f"{prefix} {text}", self._public(exc))
        if not self.complete(reply, unclean) and unclean:
            self._unclean = self._unclean or unclean  # too late for RESULT: DONE says it

    def _public(self, exc: BaseException) -> str:
        """A production 500 body: the exception's type and the id to find it in the log."""
        return f"the function failed: {type(exc).__name__} (invocation {self.id})"

    def note_ignored_return(self, value: object) -> None:
        if value is not None:
            self._s.channel.log(
                "logging",
                "WARNING",
                "a callback-style handler returned a value without calling callback; the value "
                "is ignored (respond with callback(None, response))",
            )

    def _settle(self) -> str | None:
        """After the handler unwound: wait for the thread that called callback, then check."""
        caller = self._caller
        if caller is not None and caller.is_alive():
            caller.join(max(0.0, self.deadline - time.monotonic()))
        return leftover_reason()

    def _log_exception(self, message: str, exc: BaseException | None) -> None:
        if exc is not None and exc.__traceback__ is not None:
            message += "\n" + format_traceback(exc).rstrip()
        self._s.channel.log("logging", "ERROR", message)


class CpuClock:
    """CPU seconds of the worker and its reaped children, with 3 getrusage calls per
    invocation instead of 5: children's usage only grows when a child is reaped, which
    happens during an invocation (or the worker is replaced), so the reading taken at the
    end of one invocation is still the right start for the next.

    Also the invocation's own peak RSS: the kernel's high-water mark is reset before each
    call (``5`` to ``/proc/self/clear_refs``, on an fd opened once), and ``ru_maxrss`` of the
    getrusage call made anyway after it is then this call's peak. One write per call; reading
    ``VmHWM`` from ``/proc/self/status`` instead cost 13-16 µs per call (that file is slow to
    generate), and gave the same figure (a thread that exited does not pin ``ru_maxrss``).
    """

    def __init__(self) -> None:
        self._children = 0.0
        self.peak_rss = 0
        self._clear_refs: int | None = None

    def watch_peaks(self, clear_refs: int | None) -> None:
        """Measure per-invocation peaks with ``clear_refs`` (an fd of /proc/self/clear_refs
        opened while the worker could, or None to try now); without it, the lifetime peak."""
        if clear_refs is None:
            with contextlib.suppress(OSError):
                clear_refs = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        self._clear_refs = clear_refs

    def start(self) -> float:
        if self._clear_refs is not None:
            try:
                os.write(self._clear_refs, b"5")
            except OSError:  # e.g. the function closed our fd: fall back to ru_maxrss
                self._clear_refs = None
        own = resource.getrusage(resource.RUSAGE_SELF)
        return own.ru_utime + own.ru_stime + self._children

    def stop(self) -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._children = children.ru_utime + children.ru_stime
        self.peak_rss = own.ru_maxrss * 1024  # since the reset in start(), if it worked
        return own.ru_utime + own.ru_stime + self._children
