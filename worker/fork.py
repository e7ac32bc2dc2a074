"""``isolation = "invocation"``: each call runs in a child forked from this warm worker.

The daemon sends FORK (the function to load and the project's variables: no request data).
This worker, the parent, loads the function (its module-level code runs here, once per
worker, as in any worker) and forks. The child inherits the uid, seccomp, Landlock, rlimits
and cgroup of the slot at no cost. It says FORKED, and only then does the daemon send the
call's INVOKE, which the child alone reads; it closes the command pipe before any function
code runs, runs the one call (RESULT ... DONE) and exits. The parent reaps it and says
REAPED: it never reads a byte of a request, so what call N leaves in memory dies with its
child and call N+1 starts from the parent's state again (docs/pool.md#isolation).

The parent is not dumpable: a child (same uid) can neither read its memory nor take its fds
through /proc or ptrace. The daemon's check from outside after REAPED (the slot holds the
parent alone) stays the proof that nothing of the call is left.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from fnd.protocol import messages as m
from fnd.protocol.frames import BlockingFrameReader, ProtocolError
from fnd.worker.invoke import CpuClock, Invoker, RunningCall
from fnd.worker.leftovers import children_alive, leftover_reason
from fnd.worker.output import Output, write_plain
from fnd.worker.sandbox.libc import PR_SET_DUMPABLE, PR_SET_PDEATHSIG, prctl

# The worker loop's exit codes (worker/loop.py), in the child.
_EXIT_CALL_DONE = 0
_EXIT_PROTOCOL = 2
_EXIT_INTERNAL = 3
_EXIT_UNSAFE = 4  # the parent: module-level code left something running; it cannot fork
_EXIT_CHILD_FAILED = 5  # the parent: a child ended otherwise than by finishing its call


@dataclass(frozen=True)
class Parent:
    """What the forking worker hands each child."""

    pid: int
    cmd_fd: int
    reader: BlockingFrameReader  # the command pipe's; empty between calls
    output: Output
    invoker: Invoker
    clear_refs: int | None  # /proc/<parent>/clear_refs: the parent's, closed in the child
    check_invoke: Callable[[m.Message], m.Invoke]


def serve(message: m.Message, parent: Parent) -> None:
    """Run one isolated call in a child; returns in the parent once the child is reaped."""
    function, context = _check_fork(message)
    services = parent.invoker.services
    services.environment.apply(context)  # module-level code may read the project's variables
    # A bootstrap that fails here fails again in the child, which answers with why.
    with contextlib.suppress(BaseException):
        services.loader.handler(function["name"], function["file"])
    left = leftover_reason()
    if left is not None:
        # A thread or process left by a bootstrap could read the command pipe while a child
        # waits for its INVOKE: no call is forked from here (the daemon answers 502).
        write_plain(2, f"fnd worker: cannot fork isolated calls: module-level code left {left}\n")
        os._exit(_EXIT_UNSAFE)
    prctl(PR_SET_DUMPABLE, 0)  # no /proc/<pid>/mem, fd or ptrace access for the children
    parent.output.flush()
    gc.freeze()  # the parent's objects stay out of the child's collections: pages stay shared
    parent.output.forking_call = True
    try:
        pid = os.fork()
    except OSError as exc:
        write_plain(2, f"fnd worker: cannot fork the call: {exc}\n")
        os._exit(_EXIT_INTERNAL)
    finally:
        parent.output.forking_call = False
    if pid == 0:
        _child(parent)
    status = _wait(pid)
    reaped: m.Reaped = {"t": m.REAPED, "pid": pid, "status": status, "left": children_alive()}
    parent.output.channel.send(reaped)
    if status != 0:
        # It did not end as a call ends (killed, crashed): it may have left part of its
        # INVOKE in the command pipe, which this process must never read.
        os._exit(_EXIT_CHILD_FAILED)


def _check_fork(message: m.Message) -> tuple[m.FunctionRef, dict[str, Any]]:
    function = message.get("function")
    if not (isinstance(function, dict) and isinstance(function.get("name"), str)
            and isinstance(function.get("file"), str)):
        raise ProtocolError("fork frame: function must be a {name, file} map")
    context = message.get("context")
    if not isinstance(context, dict):
        raise ProtocolError("fork frame: context must be a map")
    return {"name": function["name"], "file": function["file"]}, context


def _wait(pid: int) -> int:
    try:
        return os.waitpid(pid, 0)[1]  # EINTR is retried by Python
    except ChildProcessError:
        return -1


def _child(parent: Parent) -> NoReturn:
    """The one call, in the forked child; never returns."""
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent.pid:  # the parent died before PDEATHSIG was set
            os._exit(_EXIT_INTERNAL)
        channel = parent.output.channel
        forked: m.Forked = {"t": m.FORKED, "pid": os.getpid()}
        channel.send(forked)
        message = parent.reader.read()
        # Before any function code: the command pipe would carry the next call's INVOKE, and
        # clear_refs is the parent's.
        os.close(parent.cmd_fd)
        if parent.clear_refs is not None:
            os.close(parent.clear_refs)
        if message is None or message["t"] == m.UNFORK:  # retired, or wanted for another use
            os._exit(_EXIT_CALL_DONE)
        invoke = parent.check_invoke(message)
        invoker = parent.invoker
        invoker.clock = CpuClock()  # this process's own CPU and peak RSS
        invoker.clock.watch_peaks(None)
        RunningCall(invoke, invoker).run()
        parent.output.flush()
    except ProtocolError as exc:
        write_plain(2, f"fnd worker: protocol error on the command pipe: {exc}\n")
        os._exit(_EXIT_PROTOCOL)
    except BaseException:  # noqa: B036 - a bug of ours: say so on fd 2, then die loudly
        write_plain(2, "fnd worker: internal error\n" + traceback.format_exc())
        os._exit(_EXIT_INTERNAL)
    # os._exit: the call's threads end with it; no atexit handler of the parent's runs.
    os._exit(_EXIT_CALL_DONE)
