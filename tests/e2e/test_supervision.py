"""Pool supervision (docs/pool.md): recycling, deaths, zygote, signals, reload, dev mode.

Synchronisation is on log lines and control-socket status, each with a deadline; the only
sleeps are the polling intervals of those waits.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import psutil
import requests

from fnd.ctl.client import request as control_request
from tests.fndserver import FndServer, Line, running, until

FIXTURE = "supervision"



def _workers(fnd: FndServer) -> dict[str, int]:
    workers: dict[str, int] = fnd.status()["workers"]
    return workers



def _lines(fnd: FndServer, event: str, **fields: Any) -> list[Line]:
    return [line for line in list(fnd.lines) if line.get("event") == event
            and all(line.get(k) == v for k, v in fields.items())]


def _wait_count(fnd: FndServer, event: str, count: int, timeout: float = 30.0,
                **fields: Any) -> Line:
    """Wait for the `count`-th log line of `event` (with `fields`) and return it."""
    def seen(line: Line) -> bool:
        return line.get("event") == event and len(_lines(fnd, event, **fields)) >= count
    fnd.wait_for(seen, timeout)
    return _lines(fnd, event, **fields)[count - 1]


def _background(fnd: FndServer, path: str, results: list[requests.Response]) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(fnd.get(path)))
    thread.start()
    return thread


def _zygote_pid(fnd: FndServer) -> int:
    for child in psutil.Process(fnd.process.pid).children():
        if "fnd.worker.zygote" in " ".join(child.cmdline()):
            return child.pid
    raise AssertionError("no zygote among the daemon's children")


# -- queue -----------------------------------------------------------------------------------
def test_client_that_disconnects_while_queued_is_never_run() -> None:
    with running(FIXTURE, "--workers-min", "1", "--workers-max", "1") as fnd:
        served = fnd.status()["per_worker"][0]["served"]  # the start-up self-check's call
        results: list[requests.Response] = []
        first = _background(fnd, "/slow?s=1.5&tag=a", results)
        until(lambda: _workers(fnd)["busy"] == 1, what="the slow call running")
        address = urlsplit(fnd.url)
        gone = socket.create_connection((address.hostname, address.port))
        gone.sendall(b"GET /pid?tag=gone HTTP/1.1\r\nHost: fnd\r\n\r\n")
        until(lambda: fnd.status()["queue"] == 1, what="the call queued")
        gone.close()
        dropped = fnd.wait_for(lambda line: line.get("event") == "invocation"
                               and line.get("status") == 499)
        assert dropped["path"] == "/pid" and "disconnected" in dropped["reason"]
        first.join(30)
        assert results[0].text == "slow a"
        # The one worker ran the slow call and nothing else (counted at its DONE, which
        # may come a moment after the answer).
        until(lambda: [w["served"] for w in fnd.status()["per_worker"]] == [served + 1],
              what="the slow call counted")
        assert [w["served"] for w in fnd.status()["per_worker"]] == [served + 1]
        assert not _lines(fnd, "invocation", path="/pid", status=200)
        assert fnd.get("/pid").status_code == 200


# -- recycling -------------------------------------------------------------------------------
def test_max_requests_recycling_never_fails_a_request() -> None:
    env = {"FND_MAX_REQUESTS": "3", "FND_MAX_REQUESTS_JITTER": "1"}
    with running(FIXTURE, "--workers-min", "2", "--workers-max", "2", env=env) as fnd:
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: fnd.get("/pid"), range(60)))
        assert [r.status_code for r in responses] == [200] * 60
        assert len({r.text for r in responses}) >= 60 // 4  # at most 3 + 1 calls per worker
        until(lambda: fnd.status()["restarts"].get("max_requests", 0) >= 60 // 4 - 2,
               what="max_requests restarts counted")
        until(lambda: _workers(fnd)["idle"] == 2, what="back to two idle workers")


def test_unclean_worker_is_killed_and_replaced() -> None:
    with running(FIXTURE, "--workers-min", "1", "--workers-max", "1") as fnd:
        before = int(fnd.get("/pid").text)
        leaked = fnd.get("/leak")
        assert leaked.status_code == 200 and leaked.text == "leaked"
        exited = fnd.wait_for(lambda line: line.get("event") == "worker exited"
                              and line.get("pid") == before)
        assert exited["cause"] == "unclean"
        after = int(fnd.get("/pid").text)
        assert after != before
        assert not psutil.pid_exists(before) or psutil.Process(before).status() == "zombie"
        assert fnd.status()["restarts"] == {"unclean": 1}


def test_bootstrap_error_is_confined_to_its_function() -> None:
    with running(FIXTURE, "--workers-min", "1", "--workers-max", "1") as fnd:
        pid = fnd.get("/pid").text
        for _ in range(3):
            failed = fnd.get("/bootfail")
            assert failed.status_code == 500
            line = fnd.invocation(failed.headers["X-Fnd-Invocation-Id"])
            assert "bootstrap failed on purpose" in line["reason"]
        assert fnd.get("/pid").text == pid  # same worker: no crash, no restart
        assert fnd.get("/hello").text == "hello"
        assert fnd.status()["restarts"] == {}
        # Only the start-up check's worker left (it loaded every function, then was killed).
        assert [line["cause"] for line in _lines(fnd, "worker exited")] == ["preflight"]


# -- deaths ----------------------------------------------------------------------------------
def test_deaths_are_classified_and_workers_replaced() -> None:
    with running(FIXTURE, "--workers-min", "2", "--workers-max", "2", "--timeout", "1") as fnd:
        exited = fnd.get("/exit")
        assert exited.status_code == 502 and "exited with code 3" in exited.text
        timed_out = fnd.get("/spin")
        assert timed_out.status_code == 504
        victim = next(w["pid"] for w in fnd.status()["per_worker"] if w["state"] == "idle")
        os.kill(victim, signal.SIGKILL)
        killed = fnd.wait_for(lambda line: line.get("event") == "worker exited"
                              and line.get("pid") == victim)
        assert killed["cause"] == "signal" and "SIGKILL" in killed["reason"]
        until(lambda: fnd.status()["restarts"] == {"exit": 1, "timeout": 1, "signal": 1},
               what="one restart of each cause")
        until(lambda: _workers(fnd)["idle"] == 2, what="both workers replaced")
        assert fnd.get("/hello").text == "hello"


def test_killed_zygote_is_restarted_and_requests_keep_flowing() -> None:
    with running(FIXTURE, "--workers-min", "2", "--workers-max", "2") as fnd:
        zygote = _zygote_pid(fnd)
        os.kill(zygote, signal.SIGKILL)
        fnd.wait_for(lambda line: line.get("event") == "zygote lost")
        with ThreadPoolExecutor(10) as pool:  # queued until the new zygote's workers are up
            responses = list(pool.map(lambda _: fnd.get("/hello"), range(10)))
        assert [r.status_code for r in responses] == [200] * 10
        fnd.wait_for(lambda line: line.get("event") == "zygote restarted")
        assert _zygote_pid(fnd) != zygote
        assert fnd.status()["restarts"] == {"zygote": 1}


def test_zygote_that_cannot_start_stops_serve_with_the_reason() -> None:
    # The real CLI, with the zygote's module name pointing at nothing.
    script = ("import sys, fnd.daemon.pool.zygote_client as z;"
              "z.ZYGOTE_MODULE = 'fnd.worker.no_such_zygote';"
              "from fnd.cli import main; sys.exit(main(sys.argv[1:]))")

    def patched(command: list[str]) -> list[str]:
        return [sys.executable, "-c", script, *command[command.index("fnd.cli") + 1:]]

    with running(FIXTURE, wrap=patched, ready=False) as fnd:
        fnd.wait_for(lambda line: line.get("event") == "cannot start")
        assert fnd.process.wait(30) == 1
        fnd.log.close()  # every line read
        text = "\n".join(json.dumps(line) for line in fnd.lines)
    assert "zygote exited with code 1" in text
    assert "No module named fnd.worker.no_such_zygote" in text


# -- signals ---------------------------------------------------------------------------------
def test_sigterm_lets_in_flight_requests_finish_then_exits_0() -> None:
    with running(FIXTURE, "--workers-min", "2", "--workers-max", "2") as fnd:
        results: list[requests.Response] = []
        threads = [_background(fnd, f"/slow?s=1&tag={i}", results) for i in range(4)]
        until(lambda: _workers(fnd)["busy"] == 2 and fnd.status()["queue"] == 2,
               what="two running, two queued")
        fnd.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        assert sorted(r.text for r in results) == [f"slow {i}" for i in range(4)]
        assert fnd.process.wait(30) == 0
        assert _lines(fnd, "stopped")


def test_sigterm_answers_502_for_what_outlives_the_drain_timeout() -> None:
    env = {"FND_DRAIN_TIMEOUT": "0.5"}
    with running(FIXTURE, "--workers-min", "1", "--workers-max", "1", env=env) as fnd:
        results: list[requests.Response] = []
        thread = _background(fnd, "/slow?s=20", results)
        until(lambda: _workers(fnd)["busy"] == 1, what="the slow call running")
        fnd.process.send_signal(signal.SIGTERM)
        thread.join(30)
        assert results[0].status_code == 502 and "drain timeout" in results[0].text
        assert fnd.process.wait(30) == 0
        assert len(_lines(fnd, "invocation", path="/slow")) == 1


def test_sighup_with_50_in_flight_fails_none_and_serves_new_code_after() -> None:
    with running(FIXTURE, "--workers-min", "2", "--workers-max", "4") as fnd:
        version = fnd.project / "functions" / "version.py"
        assert fnd.get("/version").text == "v1"
        paths = ["/slow?s=0.2" if i % 2 else "/version" for i in range(50)]
        with ThreadPoolExecutor(50) as pool:
            pending = [pool.submit(fnd.get, path) for path in paths]
            until(lambda: fnd.status()["queue"] >= 30, what="the burst queued")
            version.write_text(version.read_text().replace("v1", "v2"))
            (fnd.project / "functions" / "added.py").write_text(
                "def handler(context, event, callback):\n    callback(None, 'added')\n")
            fnd.process.send_signal(signal.SIGHUP)
            responses = [future.result(60) for future in pending]
        assert [r.status_code for r in responses] == [200] * 50
        assert {r.text for r in responses if not r.text.startswith("slow")} <= {"v1", "v2"}
        fnd.wait_for(lambda line: line.get("event") == "reloaded")
        assert fnd.get("/version").text == "v2"
        assert fnd.get("/added").text == "added"
        # `fnd reload` answers once the new generation serves.
        version.write_text(version.read_text().replace("v2", "v3"))
        answer = asyncio.run(control_request(fnd.control, {"cmd": "reload"}))
        assert answer["ok"], answer
        assert fnd.get("/version").text == "v3"
        assert all(w["generation"] == answer["generation"]
                   for w in fnd.status()["per_worker"] if w["state"] == "idle" and not w["leaving"])


# -- elasticity ------------------------------------------------------------------------------
def test_idle_workers_retire_back_to_workers_min() -> None:
    env = {"FND_IDLE_TIMEOUT": "0.5"}
    with running(FIXTURE, "--workers-min", "1", "--workers-max", "3", env=env) as fnd:
        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(fnd.get, "/slow?s=1") for _ in range(3)]
            until(lambda: _workers(fnd)["busy"] == 3, what="grown to three busy workers")
            assert [f.result(30).status_code for f in pending] == [200] * 3
        # A retiring worker leaves the idle count before its exit is counted in restarts:
        # wait for both, not for the first alone.
        until(lambda: _workers(fnd)["idle"] + _workers(fnd)["busy"] == 1
              and fnd.status()["restarts"].get("idle", 0) >= 2, timeout=10,
              what="retired back to one worker, both retirements counted as idle")
        assert fnd.get("/hello").text == "hello"


# -- dev mode --------------------------------------------------------------------------------
def test_dev_mode_picks_up_new_changed_and_deleted_files() -> None:
    with running(FIXTURE, "--dev", "--workers-min", "1", "--workers-max", "2") as fnd:
        project = fnd.project
        assert fnd.get("/version").text == "v1"
        reloads = 0

        def change(edit: Callable[[], object]) -> None:
            nonlocal reloads
            edit()
            reloads += 1
            _wait_count(fnd, "reloaded", reloads)

        version = project / "functions" / "version.py"
        change(lambda: version.write_text(version.read_text().replace("v1", "v2")))
        assert fnd.get("/version").text == "v2"
        added = project / "functions" / "added.py"
        change(lambda: added.write_text(
            "def handler(context, event, callback):\n    callback(None, 'added')\n"))
        assert fnd.get("/added").text == "added"
        change(added.unlink)
        assert fnd.get("/added").status_code == 404
        change(lambda: (project / ".env").write_text("GREETING=changed\n"))
        assert fnd.get("/env").text == "changed"
        change(lambda: (project / "assets" / "new.txt").write_text("new asset"))
        assert fnd.get("/new.txt").text == "new asset"
