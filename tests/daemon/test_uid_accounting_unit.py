"""Uid accounting without a daemon: /proc parsing, the killer's refusals, the status line.

The kills themselves need worker uids and processes: tests/e2e/test_uid_accounting.py.
"""

from __future__ import annotations

import os
import threading

import pytest

from fnd.ctl.status_view import health_exit_code, render_status
from fnd.daemon.sandbox import uid_killer
from fnd.daemon.sandbox.uid_accounting import UidAccounting, _parse_status, scan
from fnd.protocol.sandbox_config import resolve

pytestmark = pytest.mark.unit

STATUS = (b"Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t77\nPid:\t77\n"
          b"PPid:\t1\nUid:\t61003\t61003\t61003\t61003\nGid:\t61003\t61003\t61003\t61003\n"
          b"Threads:\t3\nSigQ:\t0/1\n")


def test_status_gives_the_real_uid_and_the_threads() -> None:
    task = _parse_status(77, STATUS)
    assert task is not None and (task.pid, task.uid, task.threads, task.zombie) == (
        77, 61003, 3, False)
    zombie = _parse_status(78, STATUS.replace(b"S (sleeping)", b"Z (zombie)"))
    assert zombie is not None and zombie.zombie
    assert _parse_status(79, b"Name:\tgone\n") is None


def test_scan_finds_this_process_by_its_real_uid_with_its_threads() -> None:
    uid = os.getuid()
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        mine = [t for t in scan(uid, 1) if t.pid == os.getpid()]
        assert len(mine) == 1 and mine[0].uid == uid and mine[0].threads >= 2
        assert all(t.uid == uid for t in scan(uid, 1))
    finally:
        release.set()
        thread.join()
    assert (UidAccounting(uid, 1).cpu(0) or 0.0) > 0.0  # this process has used some CPU


@pytest.mark.parametrize("uid", ["0", "1234567"])
def test_the_killer_signals_nothing_unless_it_runs_as_that_unprivileged_uid(uid: str) -> None:
    # As root (uid 0: kill(-1) would reach the host) or as another uid than the one given
    # (the switch failed), it refuses before any kill. Either way this process survives.
    assert uid_killer.main(["uid_killer.py", uid]) == 2


def test_the_worker_is_told_which_accounting_holds_it() -> None:
    assert resolve({})["accounting"] == "cgroup"
    assert resolve({"accounting": "uid"})["accounting"] == "uid"
    with pytest.raises(ValueError, match="accounting"):
        resolve({"accounting": "both"})


def test_status_names_the_accounting_first_on_the_layers_line() -> None:
    status = {"ok": True, "sandbox": "strict", "accounting": "uid",
              "workers": {"idle": 2, "busy": 0, "starting": 0, "min": 2, "max": 4},
              "per_worker": [{"pid": 1, "slot": 0, "state": "idle", "served": 0,
                              "layers": {"cgroup": "n/a: uid accounting", "uid": "61000"}}]}
    text = render_status(status)  # type: ignore[arg-type]
    assert "layers     accounting=uid, cgroup=n/a: uid accounting, uid=61000\n" in text
    assert health_exit_code(status) == 0  # type: ignore[arg-type]
    cgroup = render_status(status | {"accounting": "cgroup v1"})  # type: ignore[arg-type]
    assert "layers     accounting=cgroup v1, cgroup=n/a" in cgroup
