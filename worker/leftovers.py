"""What an invocation left running: threads and child processes.

A worker is reusable only if nothing started by the last invocation can still run. Python
threads are counted with ``_thread._count()``, which also sees threads started with the
low-level ``_thread`` module and drops a thread before ``join()`` returns, so the answer is
exact, not timing-dependent. The worker is a child subreaper, so a grandchild whose parent
exited (a daemonised process) is re-parented to it and still counts as a child.
"""

from __future__ import annotations

import _thread
import os
import threading
from collections.abc import Callable

from fnd.worker.sandbox.libc import PR_SET_CHILD_SUBREAPER, prctl  # loaded once, in the zygote

_thread_count: Callable[[], int] = getattr(_thread, "_count", lambda: threading.active_count() - 1)


def become_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # OSError naming the errno when refused


def running_threads(ignore: int = 0) -> int:
    """Python threads other than the main one, minus ``ignore`` known-harmless ones."""
    return max(0, _thread_count() - ignore)


def thread_names(skip: set[int]) -> str:
    main = threading.main_thread()
    names = [t.name for t in threading.enumerate() if t is not main and t.ident not in skip]
    return ", ".join(names) or "unnamed"


def children_alive() -> bool:
    """Reap exited children; True if any child process is still running."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def leftover_reason(ignore_threads: int = 0, skip: frozenset[int] = frozenset()) -> str | None:
    """None if clean, else a one-line reason naming what is still running."""
    threads = running_threads(ignore_threads)
    if threads:
        return f"{threads} thread(s) still running ({thread_names(set(skip))})"
    if children_alive():
        return "a child process is still running"
    return None
