"""Reaping forked test children with a deadline (never a hang, never a zombie)."""

from __future__ import annotations

import os
import signal
import time


def reap(pid: int, timeout: float = 20.0) -> int:
    """The child's wait status; SIGKILLed first if it overstays `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.005)  # polling waitpid: there is no blocking wait with a timeout
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]
