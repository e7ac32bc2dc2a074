"""IPC objects that outlive processes, and workers as servers, through the real daemon, in
both isolation modes (docs/sandbox.md#system-v-ipc).

A function cannot make System V segments, queues or semaphores, POSIX message queues or
POSIX shared memory (seccomp, Landlock); a slot's System V objects, however they came to be,
are removed by the daemon once the slot is empty (daemon/sandbox/sysv_ipc.py); a function can
neither bind nor listen.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import pytest

from tests import sysv
from tests.fndserver import FndServer, running, until

pytestmark = pytest.mark.root_only  # worker uids, cgroups, SysV objects of other uids

GONE_WITHIN = 3.0  # the bound for "a function's SysV objects do not exist"
SLACK = 5.0  # a shared, slow machine: room for a worker start on top
_tags = itertools.count()


class Served(NamedTuple):
    fnd: FndServer
    isolation: str  # "worker" or "invocation"


@pytest.fixture(scope="module", params=["worker", "invocation"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    assert os.geteuid() == 0, "runs as root (CI does): worker uids and SysV objects"
    toml = f'isolation = "{request.param}"\n'
    with running("hostile", "--workers-min", "2", "--workers-max", "2", "--timeout", "20",
                 files={"fnd.toml": toml}) as server:
        yield Served(server, request.param)


def attempt(fnd: FndServer, function: str, /, **params: object) -> Any:
    response = fnd.get(function, params=params)
    assert response.status_code == 200, f"{function}: {response.status_code} {response.text}"
    return response.json()


def uid_range(fnd: FndServer) -> tuple[int, int]:
    uids = fnd.status()["uids"]
    return uids["first"], uids["last"]


def nothing_left(fnd: FndServer) -> None:
    """No SysV object owned or made by any of the daemon's worker uids, within the bound."""
    first, last = uid_range(fnd)
    until(lambda: sysv.of_uids(first, last) == [], GONE_WITHIN,
          f"no System V object of uids {first}-{last}")


def _both_workers_serve(fnd: FndServer) -> None:
    """Two `/hold` calls in flight together: with two workers, each serves one."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(20 + SLACK)
        port = listener.getsockname()[1]
        with ThreadPoolExecutor(2) as pool:
            calls = [pool.submit(attempt, fnd, "/hold", port=port) for _ in range(2)]
            held = [listener.accept()[0] for _ in range(2)]  # both calls are running now
            for conn in held:
                with conn:
                    conn.sendall(b"go")
            assert [call.result(timeout=20 + SLACK)["got"] for call in calls] == ["go", "go"]


def _idle_worker(fnd: FndServer) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def idle() -> bool:
        found[:] = [w for w in fnd.status()["per_worker"] if w["state"] == "idle"]
        return bool(found)

    until(idle, 10 + SLACK, "an idle worker")
    return found[0]


def test_sysv_ipc_and_posix_queues_are_refused(served: Served) -> None:
    fnd = served.fnd
    tag = f"fnd-ipc-{os.getpid()}-{next(_tags)}"
    assert attempt(fnd, "/sysv_ipc", tag=tag) == {
        "shmget": "EPERM", "msgget": "EPERM", "semget": "EPERM", "mq_open": "EPERM",
        "shm_open": "EACCES",  # /dev/shm is not writable (Landlock)
    }
    assert not os.path.exists(f"/dev/shm/{tag}-shm")
    nothing_left(fnd)


def test_a_shm_leak_cannot_starve_later_workers(served: Served) -> None:
    fnd = served.fnd
    for _ in range(4):  # more than one worker's worth, in every mode
        assert attempt(fnd, "/shm_leak", mb=300) == {
            "leaked_mb": 0, "stopped": "Operation not permitted"}
    nothing_left(fnd)
    pids = [attempt(fnd, "/hello")["pid"] for _ in range(6)]  # each a 200
    if served.isolation == "invocation":
        assert len(set(pids)) == 6, pids  # fresh workers, in the slots the leaks used


def test_workers_cannot_bind_or_listen(served: Served) -> None:
    fnd = served.fnd
    assert _idle_worker(fnd)["layers"]["network"] == "allowed"  # (a starting one has none)
    assert attempt(fnd, "/bind") == {
        "udp bind": "EPERM", "udp6 bind": "EPERM", "tcp bind": "EPERM",
        "tcp bind+listen": "EPERM", "tcp listen": "EPERM", "unix bind": "EPERM",
        "udp sendto": "ok",  # a client's implicit bind still works
        "socketpair": "ok",
    }


def test_a_slots_sysv_objects_are_removed_once_it_is_emptied(served: Served) -> None:
    """The belt: objects root made and handed to a slot's uid (IPC_SET), or that a process
    of that uid created, go when the slot's worker is gone."""
    fnd = served.fnd
    first, _ = uid_range(fnd)
    worker = _idle_worker(fnd)
    uid = first + worker["slot"]
    with sysv.removed_after([]) as made:
        made.append(("shm", sysv.make("shm", 4 << 20)))
        sysv.hand_to("shm", made[-1][1], uid)  # owner: the slot's uid
        made.append(("msg", sysv.make_as(uid, "msg")))  # creator: the slot's uid
        made.append(("sem", sysv.make_as(uid, "sem")))
        assert all(sysv.exists(kind, ident) for kind, ident in made)

        def removed() -> bool:
            return not any(sysv.exists(kind, ident) for kind, ident in made)

        if served.isolation == "invocation":
            # each call empties the slot of the worker that served it: two calls held in
            # flight at once are served by both workers, this slot's among them (one
            # call after another may all go to the other worker)
            _both_workers_serve(fnd)
            until(removed, GONE_WITHIN + SLACK, "the slot's objects removed")
        else:
            assert not removed()  # its worker is alive: the objects stay for now
            os.kill(worker["pid"], signal.SIGKILL)
            until(removed, GONE_WITHIN + SLACK, "the slot's objects removed")
    assert fnd.wait_for(lambda line: line.get("event")
                        == "removed a System V IPC object left by a worker"
                        and line.get("uid") == uid)
    assert attempt(fnd, "/hello")["hello"] == "world"
