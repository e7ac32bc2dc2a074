"""`isolation = "invocation"` at the speed of a fork: each call in a child of a warm worker.

The worker (the parent) stays across calls; each call runs in a process of its own, forked
from it, that holds no fd of the parent's command pipe once function code runs; the parent
is not dumpable; what a call changes (module globals, os.environ, scratch files) is not
seen by the next; what it leaves running (a thread dies with its child; a process in a
session of its own) is found, and the worker replaced (docs/pool.md#isolation).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

from fnd.ctl.client import request as control_request
from tests.e2e.hostile import FIXTURE, SLACK, alive, exit_line, gone, new_tag
from tests.fndserver import FIXTURES, FndServer, running, until

FACTS = '''\
"""What the call's process sees of itself. Its fds by fstat: /proc/self is not readable in
a forked call (Landlock's grant is the worker's own /proc/<pid>)."""
import ctypes
import os
import stat

_libc = ctypes.CDLL(None, use_errno=True)


def handler(context, event):
    fds = {}
    for fd in range(min(os.sysconf("SC_OPEN_MAX"), 4096)):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        fds[fd] = f"pipe:[{st.st_ino}]" if stat.S_ISFIFO(st.st_mode) else "other"
    return {"pid": os.getpid(), "ppid": os.getppid(), "fds": fds,
            "dumpable": _libc.prctl(3, 0, 0, 0, 0)}  # PR_GET_DUMPABLE
'''

STATE = '''\
"""Module state, os.environ and scratch files a call changes."""
import os

BOOTS = globals().get("BOOTS", 0) + 1  # module-level code: once per worker
SEEN = []


def handler(context, event):
    tag = event.get("tag", "")
    SEEN.append(tag)
    before = os.environ.get("FND_TEST_LEFT")
    os.environ["FND_TEST_LEFT"] = tag
    scratch = sorted(os.listdir(os.environ["TMPDIR"]))
    if event.get("write"):
        with open(os.path.join(os.environ["TMPDIR"], tag), "w") as file:
            file.write(tag)
    return {"seen": list(SEEN), "environ": before, "scratch": scratch, "boots": BOOTS,
            "pid": os.getpid(), "ppid": os.getppid()}
'''

SESSION = '''\
"""Answer, leaving a process in a session of its own behind."""
import os
import subprocess


def handler(context, event):
    child = subprocess.Popen(["/bin/sleep", "300"], start_new_session=True)
    return {"pid": os.getpid(), "ppid": os.getppid(), "child": child.pid}
'''

BOOT_THREAD = '''\
"""Module-level code that leaves a thread running: it could read the command pipe."""
import threading
import time

threading.Thread(target=time.sleep, args=(60,), name="boot", daemon=True).start()


def handler(context, event):
    return "never forked"
'''

CRASH = '''\
"""The call's process ends without an answer."""
import os


def handler(context, event):
    os._exit(3)
'''

# The hostile functions of the untrusted fixture find the worker's objects with
# gc.get_objects(), which does not list what the parent froze (gc.freeze) before forking:
# these find them from the call's own stack instead, as any code can.
FORGE = '''\
"""Forge RESULT and DONE for the call, look for a command pipe, then wait for more."""
import fcntl
import os
import stat
import sys
import time

from fnd.protocol.frames import encode


def _call():
    frame = sys._getframe()
    while frame is not None:
        found = frame.f_locals.get("self")
        if type(found).__name__ == "RunningCall":
            return found
        frame = frame.f_back
    raise LookupError("no running call on the stack")


def _pipes(mode):
    for fd in range(3, 256):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode) and \\
                    fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == mode:
                yield fd
        except OSError:
            pass


def handler(context, event):
    call = _call()
    result_fd = call._s.channel._fd
    if event.get("close"):
        os.close(result_fd)
        time.sleep(60)
    os.write(result_fd, encode({"t": "result", "id": call.id, "status": 200, "headers": [],
                                "body": b"forged", "clean": True, "error": None}))
    os.write(result_fd, encode({"t": "done", "id": call.id, "clean": True, "reason": None,
                                "cpu": 0.0, "rss": 0}))
    readable = list(_pipes(os.O_RDONLY))
    print(f"hostile {event.get('tag', '')} command pipes={readable}", flush=True)
    for fd in readable:
        print(f"captured {os.read(fd, 65536)!r}", flush=True)
    time.sleep(60)
'''

TOML = (FIXTURES / FIXTURE / "fnd.toml").read_text() + 'isolation = "invocation"\n'
FILES = {"fnd.toml": TOML, "functions/facts.py": FACTS, "functions/state.py": STATE,
         "functions/session.py": SESSION, "functions/boot_thread.py": BOOT_THREAD,
         "functions/crash.py": CRASH, "functions/forge.py": FORGE}


@pytest.fixture(scope="module")
def fnd() -> Iterator[FndServer]:
    # One worker: every call is forked from the same parent, unless it is replaced.
    with running(FIXTURE, "--workers-min", "1", "--workers-max", "1", files=FILES) as server:
        yield server


def _parent(fnd: FndServer) -> int:
    """The pid of the worker isolated calls fork from now, once it is idle."""
    parent = _json(fnd, "/facts")["ppid"]

    def idle() -> bool:
        return any(w["pid"] == parent and w["state"] == "idle" and not w["leaving"]
                   for w in fnd.status()["per_worker"])

    until(idle, 10 + SLACK, f"worker {parent} idle")
    return int(parent)


def _json(fnd: FndServer, path: str, **params: Any) -> Any:
    response = fnd.get(path, params=params)
    assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return response.json()


def test_the_self_check_worker_is_retired(fnd: FndServer) -> None:
    """It ran the canary in its own process: it is replaced, never forked from."""
    check = fnd.wait_for(lambda line: line.get("event") == "sandbox self-check", 10)
    exited = exit_line(fnd, check["worker_pid"], 10 + SLACK)
    assert exited["cause"] == "isolation", exited


def test_the_worker_stays_and_every_call_is_a_child_of_it(fnd: FndServer) -> None:
    parent = _parent(fnd)
    answers = [_json(fnd, "/facts") for _ in range(5)]
    pids = [a["pid"] for a in answers]
    assert len(set(pids)) == 5 and parent not in pids, (parent, pids)
    assert {a["ppid"] for a in answers} == {parent}
    assert [w["pid"] for w in fnd.status()["per_worker"]] == [parent]
    until(lambda: not any(alive(pid) for pid in pids), 5 + SLACK, "every call's process gone")


@pytest.mark.root_only
def test_the_parent_is_not_dumpable(fnd: FndServer) -> None:
    parent = _parent(fnd)
    answer = _json(fnd, "/facts")
    assert answer["ppid"] == parent
    assert answer["dumpable"] == 0  # inherited from the parent
    with open(f"/proc/{parent}/status") as status:
        uid = int(next(line for line in status if line.startswith("Uid:")).split()[1])
    assert uid != 0
    # A process that is not dumpable has its /proc files owned by root, not by its uid.
    assert os.stat(f"/proc/{parent}/fd").st_uid == 0
    assert os.stat(f"/proc/{parent}/environ").st_uid == 0


def _pipes(pid: int) -> dict[str, int]:
    """The pipes `pid` holds: "pipe:[inode]" -> its access mode (0 read, 1 write)."""
    held: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                flags = int(next(line for line in info if line.startswith("flags:")).split()[1], 8)
        except (OSError, StopIteration):
            continue
        if link.startswith("pipe:"):
            held[link] = flags & os.O_ACCMODE
    return held


@pytest.mark.root_only
def test_the_call_holds_no_fd_of_the_command_pipe(fnd: FndServer) -> None:
    parent = _parent(fnd)
    pipes = _pipes(parent)
    # The worker reads one pipe: its command pipe (fd 0 is /dev/null, 1 and 2 write).
    command = [link for link, mode in pipes.items() if mode == os.O_RDONLY]
    result = [link for link, mode in pipes.items() if mode == os.O_WRONLY]
    assert len(command) == 1, pipes
    answer = _json(fnd, "/facts")
    assert answer["ppid"] == parent
    held = set(answer["fds"].values())
    assert command[0] not in held, answer["fds"]
    assert set(result) <= held  # the result pipe and fds 1/2: the call still answers


def test_what_a_call_changes_is_not_seen_by_the_next(fnd: FndServer) -> None:
    parent = _parent(fnd)
    tags = [new_tag("state") for _ in range(4)]
    for tag in tags:
        answer = _json(fnd, "/state", tag=tag)
        assert answer["seen"] == [tag], answer  # module globals as the parent loaded them
        assert answer["environ"] is None, answer
        assert answer["boots"] == 1 and answer["ppid"] == parent, answer
        assert answer["scratch"] == [], answer


def test_files_left_in_scratch_are_gone_for_the_next_call(fnd: FndServer) -> None:
    parent = _parent(fnd)
    tag = new_tag("scratch")
    assert _json(fnd, "/state", tag=tag, write=1)["scratch"] == []
    # The worker is replaced (its scratch emptied with its slot): the next call starts empty.
    assert exit_line(fnd, parent, 5 + SLACK)["cause"] == "isolation"
    answer = _json(fnd, "/state", tag=new_tag("scratch"))
    assert answer["scratch"] == [] and answer["ppid"] != parent, answer


def test_a_thread_left_running_dies_with_its_call(fnd: FndServer) -> None:
    parent = _parent(fnd)
    response = fnd.get("/hide_thread", params={"tag": new_tag("thread")})
    assert response.status_code == 200 and response.text == "hidden"
    assert _json(fnd, "/facts")["ppid"] == parent  # nothing of the call was left


def test_a_process_left_in_a_session_of_its_own_replaces_the_worker(fnd: FndServer) -> None:
    parent = _parent(fnd)
    answer = _json(fnd, "/session")
    assert answer["ppid"] == parent
    assert exit_line(fnd, parent, 5 + SLACK)["cause"] == "unclean"
    gone(answer["child"], 5 + SLACK, "the call's session child gone with the slot")
    gone(parent, 5 + SLACK)
    assert _json(fnd, "/facts")["ppid"] != parent


def test_a_worker_whose_module_code_left_a_thread_forks_nothing(fnd: FndServer) -> None:
    # The first call may run in a child already waiting (forked for another function): it
    # loads the module itself, and its thread ends with it. The next child is ordered for
    # this function: the worker loads it, finds the thread, and exits instead of forking.
    response = fnd.get("/boot_thread")
    assert response.status_code in (200, 502), (response.status_code, response.text)
    assert fnd.wait_for(lambda line: "cannot fork isolated calls: module-level code left 1 "
                        "thread(s) still running (boot)" in str(line.get("line", "")), 10)
    assert _json(fnd, "/facts")["pid"]  # the next worker serves


def test_a_call_that_dies_without_answering_is_a_502_and_its_worker_replaced(
        fnd: FndServer) -> None:
    parent = _parent(fnd)
    response = fnd.get("/crash")
    assert response.status_code == 502, (response.status_code, response.text)
    assert "exited with code 3" in response.text
    gone(parent, 5 + SLACK, "the worker the crashed call was forked from")
    assert _json(fnd, "/facts")["ppid"] != parent


def test_a_forged_done_gains_nothing_and_the_slot_dies_at_the_limit(fnd: FndServer) -> None:
    parent = _parent(fnd)
    tag = new_tag("forge")
    response = fnd.get("/forge", params={"tag": tag})
    assert response.status_code == 200 and response.text == "forged"  # its own call only
    line = fnd.wait_for(lambda line: str(line.get("line", "")).startswith(f"hostile {tag} "),
                        10)
    assert line["line"] == f"hostile {tag} command pipes=[]", line
    # Its DONE is taken, but the worker never says REAPED: the call's limit kills the slot.
    assert exit_line(fnd, parent, 5 + SLACK)["cause"] == "timeout"
    gone(parent, 5 + SLACK)
    for _ in range(3):
        assert _json(fnd, "/facts")["ppid"] != parent
    assert not [line for line in fnd.lines if str(line.get("line", "")).startswith("captured")]


def test_a_call_that_closes_its_result_pipe_ends_at_its_time_limit(fnd: FndServer) -> None:
    """The worker still holds the result pipe, so no EOF tells the daemon: the call gets
    504 at its limit (2 s here) and the whole slot is killed."""
    parent = _parent(fnd)
    response = fnd.get("/forge", params={"close": 1})
    assert response.status_code == 504, (response.status_code, response.text)
    assert exit_line(fnd, parent, 5 + SLACK)["cause"] == "timeout"
    gone(parent, 5 + SLACK)


def test_a_reload_retires_the_worker_and_its_waiting_child(fnd: FndServer) -> None:
    parent = _parent(fnd)
    waiting = _json(fnd, "/facts")["pid"]  # after it, the next child is forked and waits
    reply = asyncio.run(control_request(fnd.control, {"cmd": "reload"}))
    assert reply["ok"], reply
    assert exit_line(fnd, parent, 10 + SLACK)["cause"] == "reload"
    gone(parent, 5 + SLACK)
    answer = _json(fnd, "/facts")
    assert answer["ppid"] != parent and answer["pid"] != waiting
