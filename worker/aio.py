"""Running an async handler on a fresh asyncio loop (docs/handlers.md#completing-the-invocation).

When the response is sent, every other task of the loop is cancelled at once: a task that
was already woken up gets CancelledError at its ``await`` instead of running on. The loop
then runs only long enough for the cancelled tasks to unwind (their ``finally`` blocks),
bounded by the invocation's deadline, and is closed. A new loop per invocation means no
timer or callback of one invocation can fire during the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from fnd.worker.invoke import RunningCall

# ThreadPoolExecutor's default, computed once: os.cpu_count() reads /sys on every call.
_POOL_SIZE = min(32, (os.cpu_count() or 1) + 4)

P = ParamSpec("P")
T = TypeVar("T")


class CallbackDone(BaseException):
    """Raised by callback so the handler stops; ``finally`` blocks still run.

    A BaseException, so ``except Exception`` in a handler does not swallow it.
    """


class TrackedExecutor(ThreadPoolExecutor):
    """The loop's default executor (``to_thread``, ``run_in_executor``, DNS lookups).

    It knows how many of its threads are idle: an idle pool thread runs no user code, so it
    does not make the worker unclean, and shutting the pool down ends it deterministically.
    """

    def __init__(self) -> None:
        super().__init__(max_workers=_POOL_SIZE, thread_name_prefix="fnd-asyncio")
        self._pending = 0
        self._count_lock = threading.Lock()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._count_lock:
            self._pending += 1
        future = super().submit(fn, *args, **kwargs)
        # Fires when the job finished, failed or was cancelled before it started.
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: Future[Any]) -> None:
        with self._count_lock:
            self._pending -= 1

    @property
    def pending(self) -> int:
        with self._count_lock:
            return self._pending

    def idle_threads(self) -> int:
        alive = sum(thread.is_alive() for thread in self._threads)
        return max(0, alive - self.pending)


class AsyncRun:
    def __init__(self, call: RunningCall, callback_style: bool) -> None:
        self._call = call
        self._callback_style = callback_style
        self.loop = asyncio.new_event_loop()
        self.executor = TrackedExecutor()
        self.loop.set_default_executor(self.executor)
        self.loop.set_exception_handler(_exception_handler)
        self._thread = threading.get_ident()  # the loop runs where it was made
        self._wakeup: asyncio.Future[None] = self.loop.create_future()

    def run(self, awaitable: Awaitable[Any]) -> Any:
        """Run the handler's awaitable; its value (return style) or None once responded."""
        asyncio.set_event_loop(self.loop)
        main = asyncio.ensure_future(awaitable, loop=self.loop)
        main.add_done_callback(self._main_done)
        while not self._wakeup.done():
            try:
                self.loop.run_until_complete(self._wakeup)
            except RuntimeError:
                if self.loop.is_closed():
                    raise
                # The function called loop.stop() itself: keep serving the invocation.
        if self._call.finished.is_set():
            return None
        failure = _failure(main)
        if failure is not None:
            raise failure
        return main.result()

    def _main_done(self, main: asyncio.Future[Any]) -> None:
        if self._callback_style and _failure(main) is None:
            if not self._call.finished.is_set():
                # A callback-style handler that returned keeps the invocation open.
                self._call.note_ignored_return(main.result())
            return
        self._wake()

    def _wake(self) -> None:
        # One future ends run(); loop.stop() would also cut short the later clean-up runs.
        if not self._wakeup.done():
            self._wakeup.set_result(None)

    def responded(self) -> None:
        """The response was sent (from any thread): cancel every other task at once."""
        if threading.get_ident() == self._thread:
            self._cancel_others()
        else:
            # RuntimeError: the loop is already closed, so nothing is left to cancel.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._cancel_others)

    def _cancel_others(self) -> None:
        current = asyncio.current_task(self.loop) if self.loop.is_running() else None
        for task in asyncio.all_tasks(self.loop):
            if task is not current:
                task.cancel()
        self._wake()

    def idle_threads(self) -> int:
        return self.executor.idle_threads()

    def close(self, deadline: float) -> str | None:
        """Cancel what is left, let it unwind until the deadline, close. Reason if unclean."""
        reason = None
        try:
            pending = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                timeout = max(0.0, deadline - time.monotonic())
                self.loop.run_until_complete(asyncio.wait(pending, timeout=timeout))
                stuck = sum(not task.done() for task in pending)
                if stuck:
                    reason = f"{stuck} asyncio task(s) ignored cancellation"
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            # Idle pool threads end promptly; a busy one is reported by the leftover check.
            self.executor.shutdown(wait=self.executor.pending == 0, cancel_futures=True)
            asyncio.set_event_loop(None)
            self.loop.close()
        return reason


def _failure(main: asyncio.Future[Any]) -> BaseException | None:
    """The exception that ended the handler's task, if it did not end by callback."""
    if not main.done():
        return None
    if main.cancelled():
        return asyncio.CancelledError("the handler's task was cancelled")
    exc = main.exception()
    return None if isinstance(exc, CallbackDone) else exc


def _exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # callback's own CallbackDone is how a task ends on purpose: not worth a log line.
    if isinstance(context.get("exception"), CallbackDone):
        return
    loop.default_exception_handler(context)
