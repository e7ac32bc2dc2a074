"""kill_uid: everything of a uid dies, a setsid child and a process that kills the helper
included. Real processes under a uid range held for the test (uid_claim), as root."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from fnd.daemon.sandbox.uid_accounting import UidAccounting, kill_uid, scan
from fnd.daemon.sandbox.uid_claim import claim
from tests.fndserver import until

pytestmark = pytest.mark.root_only  # processes under other uids

SLEEPER = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\n"
           "time.sleep(600)")
# kill(-1) as the uid, forever: it kills every helper started as that uid (where Landlock
# does not scope its signals, as here: it runs outside any Landlock domain).
LOOPER = ("import os, signal\nprint('ready', flush=True)\nwhile True:\n    try:\n"
          "        os.kill(-1, signal.SIGKILL)\n    except OSError:\n        pass")


@pytest.fixture
def uid() -> Iterator[int]:
    held = claim(None, 1, "tests/daemon/test_uid_kill.py", "-")
    try:
        yield held.first
        kill_uid(held.first)
    finally:
        held.release()


def _start(uid: int, code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", code], user=uid, group=uid,
                            extra_groups=[], stdout=subprocess.PIPE, text=True)


def test_a_setsid_child_of_the_uid_dies(uid: int) -> None:
    accounting = UidAccounting(uid, 1)
    parent = _start(uid, SLEEPER)
    # The parent and its setsid child, both started.
    until(lambda: accounting.tasks(0) == 2, 30, "two processes of the uid")
    assert accounting.kill_slot(0) == 2
    assert parent.wait(10) == -9
    assert not [t for t in scan(uid, 1) if not t.zombie]


def test_a_process_that_kills_every_helper_is_killed_by_the_daemon(uid: int) -> None:
    looper = _start(uid, LOOPER)
    try:
        assert looper.stdout is not None and looper.stdout.readline() == "ready\n"
        assert kill_uid(uid)  # its default deadline, as the daemon calls it
        assert looper.wait(10) == -9
    finally:
        looper.kill()  # a failed kill_uid leaves nothing running either
        looper.wait()
