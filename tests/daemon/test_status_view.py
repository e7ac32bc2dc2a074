"""`fnd status`: the table, per-worker RSS/CPU from psutil, and the health exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from fnd.ctl.status_view import (
    CRASH_STORM,
    EXIT_DEGRADED,
    EXIT_HEALTHY,
    collect_process_figures,
    health_exit_code,
    health_problems,
    render_status,
)
from fnd.daemon.stats import CRASH_WINDOW, Stats

LAYERS = {"cgroup": "v1", "uid": "61001", "landlock": "abi 7", "seccomp": "on",
          "network": "allowed"}


def status(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ok": True,
        "version": "0.1.0",
        "pid": 4242,
        "uptime": 3725.0,
        "listen": "unix:/run/fnd/http.sock",
        "project": "/srv/fnd/project",
        "sandbox": "strict",
        "workers": {"idle": 1, "busy": 1, "starting": 1, "min": 2, "max": 8},
        "queue": 0,
        "per_worker": [
            {"pid": 5001, "slot": 1, "state": "busy", "generation": 1, "function": "/slow",
             "invocation": "inv-abc", "busy_for": 1.25, "served": 7, "layers": LAYERS,
             "rss": 12 * 1024 * 1024, "cpu": 0.5},
            {"pid": 5000, "slot": 0, "state": "idle", "generation": 1, "function": None,
             "invocation": None, "busy_for": None, "served": 41, "layers": LAYERS,
             "rss": None, "cpu": None},
            {"pid": None, "slot": 2, "state": "starting", "generation": 1, "function": None,
             "invocation": None, "busy_for": None, "served": 0, "layers": {}},
        ],
        "totals": {"invocations": 120, "ok": 100, "error": 3, "timeout": 2, "crash": 1,
                   "overload": 4, "rejected": 10},
        "restarts": {"timeout": 2, "crash": 1},
    }
    return base | overrides


def test_the_table_shows_everything_spec_9_4_lists() -> None:
    text = render_status(status())
    lines = text.splitlines()
    assert lines[0] == "fnd 0.1.0   pid 4242   up 1h 02m 05s"
    assert "listen     unix:/run/fnd/http.sock" in lines
    assert "sandbox    strict" in lines
    assert ("layers     cgroup=v1, uid=61001, landlock=abi 7, seccomp=on, network=allowed"
            in lines)
    assert "workers    1 idle, 1 busy, 1 starting (min 2, max 8)" in lines
    assert "queue      0 waiting, longest wait -" in lines
    assert ("totals     120 invocations, 3 errors, 2 timeouts, 1 crashes, 4 503s" in lines)
    assert "restarts   crash 1, timeout 2" in lines
    assert "health     ok" in lines

    header = lines.index(next(line for line in lines if line.startswith("PID")))
    assert lines[header].split() == ["PID", "STATE", "FUNCTION", "INVOCATION", "AGE",
                                     "SERVED", "RSS", "CPU"]
    rows = [line.split() for line in lines[header + 1:]]
    assert rows == [  # by slot
        ["5000", "idle", "-", "-", "-", "41", "-", "-"],
        ["5001", "busy", "/slow", "inv-abc", "1.2s", "7", "12.0MiB", "0.50s"],
        ["-", "starting", "-", "-", "-", "0", "-", "-"],
    ]
    # Columns line up: every row's cells start where the header's do.
    start = lines[header].index("SERVED")
    assert all(line[start - 2:start] == "  " for line in lines[header + 1:])


def test_longest_wait_and_no_restarts() -> None:
    text = render_status(status(queue=3, queue_longest_wait=2.5, restarts={}))
    assert "queue      3 waiting, longest wait 2.5s" in text
    assert "restarts   none" in text


def test_a_degraded_daemon_says_why() -> None:
    text = render_status(status(sandbox="permissive",
                                workers={"idle": 0, "busy": 1, "starting": 1,
                                         "min": 2, "max": 8}))
    assert ("health     degraded: 1 ready worker(s), fewer than workers_min 2; "
            "sandbox is permissive") in text


def test_a_minimal_answer_still_renders() -> None:
    text = render_status({"version": "0.1.0"})
    assert "workers    0 idle, 0 busy, 0 starting (min ?, max ?)" in text
    assert "listen     -" in text
    assert "PID" not in text


# -- psutil figures, read in the CLI process ------------------------------------------------

def test_process_figures_for_live_vanished_and_pidless_workers() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    rows = collect_process_figures([
        {"pid": os.getpid(), "slot": 0},
        {"pid": gone.pid, "slot": 1},
        {"pid": None, "slot": 2},
    ])
    assert rows[0]["rss"] > 1024 * 1024
    assert rows[0]["cpu"] > 0
    assert rows[1]["rss"] is None and rows[1]["cpu"] is None
    assert rows[2]["rss"] is None and rows[2]["cpu"] is None
    assert rows[0]["slot"] == 0  # the rest of the row is kept


def test_figures_land_in_the_table() -> None:
    answer = status()
    answer["per_worker"] = collect_process_figures([
        {"pid": os.getpid(), "slot": 0, "state": "idle", "served": 3},
    ])
    row = render_status(answer).splitlines()[-1].split()
    assert row[0] == str(os.getpid())
    assert row[6].endswith("MiB")
    assert row[7].endswith("s")


# -- health ---------------------------------------------------------------------------------

def test_healthy() -> None:
    assert health_problems(status()) == []
    assert health_exit_code(status()) == EXIT_HEALTHY == 0


@pytest.mark.parametrize("change", [
    {"workers": {"idle": 1, "busy": 0, "starting": 1, "min": 2, "max": 8}},
    {"sandbox": "permissive"},
    {"recent_crashes": CRASH_STORM},
    {"ok": False, "error": "boom"},
])
def test_degraded(change: dict[str, Any]) -> None:
    assert health_exit_code(status(**change)) == EXIT_DEGRADED == 3


def test_a_few_crashes_are_not_a_storm() -> None:
    assert health_exit_code(status(recent_crashes=CRASH_STORM - 1)) == EXIT_HEALTHY


def test_busy_workers_count_as_ready() -> None:
    answer = status(workers={"idle": 0, "busy": 2, "starting": 0, "min": 2, "max": 2})
    assert health_exit_code(answer) == EXIT_HEALTHY


def test_stats_count_recent_crashes_for_the_storm_rule() -> None:
    stats = Stats()
    for reason in ("reload", "max_requests", "timeout", "unclean"):  # planned or decided
        stats.worker_restart(reason)
    assert stats.recent_crashes() == 0
    for reason in ("exit", "oom", "zygote", "signal", "protocol"):
        stats.worker_restart(reason)
    assert stats.recent_crashes() == CRASH_STORM
    assert health_exit_code(status(recent_crashes=stats.recent_crashes())) == EXIT_DEGRADED


def test_old_crashes_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("fnd.daemon.stats.time.monotonic", lambda: clock[0])
    stats = Stats()
    for _ in range(CRASH_STORM):
        stats.worker_restart("crash")
    clock[0] += CRASH_WINDOW + 1
    assert stats.recent_crashes() == 0
    assert stats.restarts["crash"] == CRASH_STORM  # the total is kept for metrics


def test_stats_totals_are_zero_filled() -> None:
    assert Stats().totals() == {"invocations": 0, "ok": 0, "error": 0, "timeout": 0,
                                "crash": 0, "overload": 0, "rejected": 0}


@pytest.mark.parametrize(("uids", "shown"), [
    ({"first": 61064, "last": 61127, "automatic": True}, "61064-61127 (automatic)"),
    ({"first": 70000, "last": 70007, "automatic": False}, "70000-70007"),
    ({"first": 61000, "last": None, "automatic": False, "held": False},
     "from 61000 (not held: may overlap another fnd)"),
    (None, "n/a: not running as root (workers keep the daemon's uid)"),
])
def test_the_worker_uid_range_is_shown(uids: dict[str, Any] | None, shown: str) -> None:
    assert f"uids       {shown}\n" in render_status(status(uids=uids))
