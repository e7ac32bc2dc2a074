"""Kill every process of one worker uid: run as that uid, ``python -I -S uid_killer.py UID``.

Started by daemon/sandbox/uid_accounting.py with the slot's uid, gid and no groups. As that
uid, ``kill(-1, SIGKILL)`` reaches exactly the processes whose real or saved uid is the slot's
(the kernel spares the caller), whatever their session or parent: a ``setsid`` grandchild
dies too, and no pid read from /proc is ever signalled (that pid could have been reused by
the time the signal goes). It repeats until no live process of the uid but itself is left
in /proc, or its deadline passes. Standalone (stdlib only): it runs without site-packages.

Exit status: 0 nothing of the uid is left alive, 1 something still is at the deadline,
2 it is not running as the unprivileged uid it was given (it then signals nothing).
"""

from __future__ import annotations

import os
import signal
import sys
import time

DEADLINE = 1.0  # seconds


def _capabilities() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return -1


def _others_alive(uid: int, me: int) -> bool:
    """A process other than this one, real uid `uid`, not a zombie."""
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                text = f.read()
        except OSError:
            continue
        real = state = b""
        for line in text.splitlines():
            if line.startswith(b"State:"):
                state = line.split()[1]
            elif line.startswith(b"Uid:"):
                real = line.split()[1]
                break
        if real == str(uid).encode() and state not in (b"Z", b"X"):
            return True
    return False


def main(argv: list[str]) -> int:
    uid = int(argv[1])
    # kill(-1) with root or CAP_KILL would reach every process of the host: refuse.
    if uid == 0 or os.getresuid() != (uid, uid, uid) or _capabilities() != 0:
        return 2
    me = os.getpid()
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:  # nothing left it may signal
            return 0
        if not _others_alive(uid, me):
            return 0  # only zombies are left: their parents (or init) reap them
        if time.monotonic() >= deadline:
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
