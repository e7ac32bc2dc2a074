"""Wait for a worker slot's cgroup to empty (tests that kill what ran in a slot)."""

from __future__ import annotations

import time

from fnd.daemon.sandbox.cgroups import Cgroups


def wait_empty(cgroups: Cgroups, slot: int, timeout: float = 2.0) -> bool:
    """Wait (blocking, bounded) until no process is left in the slot's cgroup, dead ones
    included: a killed process still counts against pids.max until its parent reaps it."""
    deadline = time.monotonic() + timeout
    while cgroups.pids(slot) or cgroups.pids_current(slot):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    return True
