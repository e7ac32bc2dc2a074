"""The admin listener's probes on a real `fnd serve`: /livez and /readyz after start, /readyz
503 from the start of a drain while a call is still in flight, and 503 while fewer than
`workers_min` workers are ready."""

from __future__ import annotations

import signal
import socket
import threading

import psutil
import requests

from tests.fndserver import FndServer, running, until

# Holds its worker until the test creates the release file (no sleep-and-hope), 30 s at most.
HOLD = """import os, time

def handler(context, event, callback):
    release = os.path.join(os.path.dirname(__file__), "release")
    deadline = time.monotonic() + 30
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    callback(None, "held")
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _probe(port: int, path: str) -> tuple[int, str, str | None]:
    response = requests.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    return response.status_code, response.text, response.headers.get("Server")


def _busy(fnd: FndServer) -> int:
    return int(fnd.status()["workers"]["busy"])


def test_livez_and_readyz_answer_200_once_started() -> None:
    port = _free_port()
    with running("ops", "--metrics-port", str(port), "--server-header", "edge") as fnd:
        assert _probe(port, "/livez") == (200, "ok\n", "edge")
        assert _probe(port, "/readyz") == (200, "ready\n", "edge")
        assert fnd.get("/hello").status_code == 200
        assert _probe(port, "/metrics")[2] == "edge"  # not aiohttp's own Server header


def test_readyz_is_503_from_the_start_of_a_drain_while_a_call_runs() -> None:
    port = _free_port()
    with running("ops", "--metrics-port", str(port), files={"functions/hold.py": HOLD}) as fnd:
        answers: list[requests.Response] = []
        call = threading.Thread(target=lambda: answers.append(fnd.get("/hold")))
        call.start()
        until(lambda: _busy(fnd) == 1, what="the held call running")
        assert _probe(port, "/readyz")[0] == 200
        fnd.process.send_signal(signal.SIGTERM)
        until(lambda: _probe(port, "/readyz") == (503, "not ready: draining\n", "fnd"),
              what="/readyz 503 during the drain")
        assert not answers, "the call in flight was not finished yet"
        assert _probe(port, "/livez")[0] == 200  # alive: no restart in the middle of a drain
        (fnd.project / "functions" / "release").write_text("")
        call.join(30)
        assert [(r.status_code, r.text) for r in answers] == [(200, "held")]
        assert fnd.process.wait(30) == 0


def test_readyz_is_503_while_fewer_than_workers_min_are_ready() -> None:
    port = _free_port()
    with running("ops", "--metrics-port", str(port), "--workers-min", "2") as fnd:
        daemon = psutil.Process(fnd.pid)
        zygote = next(p for p in daemon.children() if "zygote" in " ".join(p.cmdline()))
        worker_pid = next(w["pid"] for w in fnd.status()["per_worker"] if w["pid"])
        zygote.suspend()  # no replacement can be forked while it is stopped
        try:
            psutil.Process(worker_pid).kill()
            until(lambda: _probe(port, "/readyz") ==
                  (503, "not ready: 1 of workers_min 2 workers ready\n", "fnd"),
                  what="/readyz 503 with one worker short")
        finally:
            zygote.resume()
        until(lambda: _probe(port, "/readyz")[0] == 200, timeout=30, what="ready again")
        assert fnd.get("/hello").status_code == 200
