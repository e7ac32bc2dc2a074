"""Scratch and output are bounded, through a real `fnd serve` (fixtures/bounds, as root).

Scratch: each worker's scratch folder is its own tmpfs of scratch_mb (8 MiB here), so a
function that tries to write 2 GB gets ENOSPC, and whatever a worker leaves there is gone
once it has left. Output: at most max_output (1 MiB) of a function's output per invocation
reaches the daemon's log, then one "truncated" line; the worker caps what it sends, and the
daemon caps what it logs whatever the worker sends.
"""

from __future__ import annotations

import asyncio
import glob
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from fnd.ctl.client import request as control_request
from fnd.daemon.pool.output_cap import SLACK
from fnd.daemon.sandbox.scratch_root import roots_of
from fnd.protocol.sandbox_config import MiB
from tests.fndserver import FndServer, running, until

pytestmark = pytest.mark.root_only  # worker uids, cgroups, mounts

SCRATCH_MIB = 8  # fixtures/bounds/fnd.toml
MAX_OUTPUT = 1 * MiB  # the default


@pytest.fixture(scope="module")
def fnd() -> Iterator[FndServer]:
    assert os.geteuid() == 0, "scratch mounts need root (CI runs as root)"
    with running("bounds", "--timeout", "20") as server:
        yield server


def _scratch_root(fnd: FndServer) -> str:
    [root] = roots_of(fnd.process.pid)
    return root


def _next_request_works(fnd: FndServer) -> None:
    assert fnd.process.poll() is None
    response = fnd.get("/hello")
    assert (response.status_code, response.text) == (200, "hello")


def test_workers_report_the_scratch_limit(fnd: FndServer) -> None:
    workers = [w for w in fnd.status()["per_worker"] if w["state"] == "idle"]
    assert workers
    for worker in workers:
        assert worker["layers"]["scratch_limit"] == f"{SCRATCH_MIB} MiB"


def test_filling_scratch_is_enospc_inside_the_function(fnd: FndServer) -> None:
    response = fnd.get("/fill_scratch")
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["errno"], result["errno_number"]) == ("ENOSPC", 28)
    assert result["written"] <= SCRATCH_MIB * MiB
    assert result["cwd"] == result["tmpdir"]
    assert result["cwd"].startswith(_scratch_root(fnd) + "/slot-")
    assert result["seconds"] < 10  # a bounded tmpfs fills fast; the limit is 20 s
    _next_request_works(fnd)


def test_a_workers_files_go_when_it_leaves(fnd: FndServer) -> None:
    root = _scratch_root(fnd)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(fnd.get, "/marker")  # writes marker.txt, waits for "go", exits
        found: list[str] = []

        def marker_written() -> bool:
            found[:] = glob.glob(os.path.join(root, "slot-*", "marker.txt"))
            return bool(found)

        until(marker_written, what="marker.txt in a scratch folder")
        scratch = os.path.dirname(found[0])  # seen from the daemon's side of the sandbox
        with open(os.path.join(scratch, "go"), "w"):
            pass
        assert answer.result().status_code == 502  # the worker died without answering
    until(lambda: os.listdir(scratch) == [], timeout=10, what=f"{scratch} emptied")
    _next_request_works(fnd)


def test_a_retired_generations_files_go_with_it(fnd: FndServer) -> None:
    scratch = fnd.get("/leave_file").json()["cwd"]
    assert os.listdir(scratch) == ["left.txt"]
    answer = asyncio.run(control_request(fnd.control, {"cmd": "reload"}))
    assert answer["ok"] is True, answer
    # Every worker of the old generation is retired; the one that wrote the file among them.
    until(lambda: os.listdir(scratch) == [], timeout=10, what=f"{scratch} emptied")
    _next_request_works(fnd)


def _output_of(fnd: FndServer, ident: str) -> list[dict[str, object]]:
    return [line for line in fnd.lines
            if line.get("event") == "function output" and line.get("invocation_id") == ident]


def test_printing_10_mb_logs_1_mib_and_one_truncated_line(fnd: FndServer) -> None:
    response = fnd.get("/flood")
    assert (response.status_code, response.text) == (200, "flooded")
    ident = response.headers["X-Fnd-Invocation-Id"]
    note = fnd.wait_for(lambda line: line.get("invocation_id") == ident
                        and str(line.get("line", "")).startswith("output truncated: "))
    printed = 100_000 * 100
    logged = [line for line in _output_of(fnd, ident) if line["stream"] == "stdout"]
    assert len(logged) == MAX_OUTPUT // 100  # every line counts its 99 characters + newline
    assert note == {**note, "level": "warning", "stream": "fnd", "line":
                    f"output truncated: {printed - len(logged) * 100} bytes over the 1 MiB "
                    "limit for this invocation"}
    assert [line for line in _output_of(fnd, ident) if line["stream"] == "fnd"] == [note]
    _next_request_works(fnd)


def test_the_daemon_caps_output_the_worker_cannot_count(fnd: FndServer) -> None:
    response = fnd.get("/raw_flood")
    assert (response.status_code, response.text) == (200, "flooded")
    ident = response.headers["X-Fnd-Invocation-Id"]
    cut = fnd.wait_for(lambda line: line.get("event") == "function output truncated"
                       and line.get("invocation_id") == ident)
    assert cut["level"] == "warning"
    logged = sum(len(str(line["line"])) + 1 for line in _output_of(fnd, ident))
    assert MAX_OUTPUT <= logged <= MAX_OUTPUT + SLACK
    _next_request_works(fnd)


# --- without CAP_SYS_ADMIN the bound cannot be applied -------------------------------------------


def _without_sys_admin(command: list[str]) -> list[str]:
    return ["setpriv", "--bounding-set=-sys_admin", "--", *command]


def test_strict_refuses_to_start_when_scratch_cannot_be_bounded() -> None:
    with running("bounds", wrap=_without_sys_admin, ready=False) as server:
        line = server.wait_for(lambda entry: entry.get("event") == "cannot start")
        assert line["reason"].startswith("sandbox: scratch: cannot mount a tmpfs on ")
        assert "needs CAP_SYS_ADMIN" in line["reason"]
        assert "scratch_mb = 8" in line["reason"]
        assert server.process.wait(30) == 1


def test_permissive_warns_and_reports_the_layer_off() -> None:
    with running("bounds", env={"FND_SANDBOX": "permissive"}, wrap=_without_sys_admin) as fnd:
        warning = fnd.wait_for(lambda line: line.get("event") == "sandbox degraded"
                               and "scratch" in str(line.get("reason")))
        assert "cannot mount a tmpfs" in warning["reason"]
        layers = fnd.status()["per_worker"][0]["layers"]
        assert layers["scratch_limit"].startswith("off: ")
        assert layers["scratch_limit"].endswith("is not a size-limited mount")
        _next_request_works(fnd)
