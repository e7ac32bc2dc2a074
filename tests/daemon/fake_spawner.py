"""An in-memory Spawner for the pool's unit tests: workers are pipes the test plays.

No process is made. Each spawn opens real pipes (the pool's WorkerProc reads and writes them
as it would a worker's) and a `FakeWorker` holds the far ends: it says READY, answers an
INVOKE with RESULT and DONE frames (or whatever `on_invoke` does), dies with a given wait
status, or hangs. Kills, slot kills and the slot probe are recorded and answered from plain
fields the test sets (`leftovers`, `cpu_used`, `task_counts`, `oom`).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import cast

from fnd.daemon.pool.spawner import SpawnEvents
from fnd.daemon.pool.zygote_client import SpawnedPipes, ZygoteError
from fnd.protocol import FrameDecoder, encode
from fnd.protocol import messages as m
from fnd.protocol.sandbox_config import LAYERS

SIGKILLED = signal.SIGKILL.value  # the wait status of a process killed by SIGKILL
ALL_LAYERS = {name: "on" for name in LAYERS}


def exit_code(code: int) -> int:
    """The wait status of a process that exited with `code`."""
    return code << 8


class FakeWorker:
    """The worker's side of one spawn: the ends of its pipes the zygote would hand it."""

    def __init__(self, spawner: FakeSpawner, slot: int, pid: int) -> None:
        self.spawner, self.slot, self.pid = spawner, slot, pid
        self._cmd_r, cmd_w = os.pipe()
        res_r, self._res_w = os.pipe()
        out_r, self._out_w = os.pipe()
        self.pipes = SpawnedPipes(cmd_w=cmd_w, res_r=res_r, out_r=out_r)
        self.received: list[m.Message] = []  # every frame the daemon sent
        self.alive = True  # its process "exists"; False once it exited or was killed
        self.status: int | None = None  # its wait status once it exited
        self.child: int | None = None  # the pid of the child serving an isolated call
        self.forks = 0
        self._decoder = FrameDecoder()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._cmd_r, self._readable)

    # -- what the worker says ------------------------------------------------------------
    def send(self, message: m.Message) -> None:
        # Untyped on purpose: the tests also send frames no worker may send.
        os.write(self._res_w, encode(cast(m.Frame, message)))

    def ready(self, layers: dict[str, str] | None = None, pid: int | None = None) -> None:
        self.send({"t": m.READY, "pid": pid or self.pid,
                   "layers": ALL_LAYERS if layers is None else layers})

    def answer(self, invoke: m.Message, status: int = 200, body: bytes = b"ok",
               clean: bool = True, cpu: float = 0.001, rss: int = 1 << 20,
               headers: list[list[str]] | None = None) -> None:
        """RESULT, then DONE, for the INVOKE frame `invoke`."""
        self.send({"t": m.RESULT, "id": invoke["id"], "status": status,
                   "headers": headers or [], "body": body})
        self.send({"t": m.DONE, "id": invoke["id"], "clean": clean, "cpu": cpu, "rss": rss})
        if self.child is not None:  # an isolated call's child exits; the worker reaps it
            self.send({"t": m.REAPED, "pid": self.child, "status": 0, "left": False})
            self.child = None

    def print(self, text: str) -> None:
        """Text below Python's sys.stdout (fd 1/2)."""
        os.write(self._out_w, text.encode())

    # -- what happens to it --------------------------------------------------------------
    def exit(self, status: int, report: bool = True) -> None:
        """The process ends with wait status `status`: its pipes close, and the zygote
        reports the status (unless `report` is False: the zygote never says)."""
        if not self.alive:
            return
        self.alive = False
        self.status = status
        self.close_result_pipe()
        self._close_cmd()
        if report and self.spawner.events is not None:
            events = self.spawner.events
            self._loop.call_soon(events.on_exited, self.pid, status)

    def close_result_pipe(self) -> None:
        """Its code closes fds 1, 2 and the result pipe but the process runs on."""
        for fd in (self._res_w, self._out_w):
            if fd >= 0:
                os.close(fd)
        self._res_w = self._out_w = -1

    def _close_cmd(self) -> None:
        if self._cmd_r >= 0:
            self._loop.remove_reader(self._cmd_r)
            os.close(self._cmd_r)
            self._cmd_r = -1

    def _readable(self) -> None:
        data = os.read(self._cmd_r, 1 << 16)
        if not data:  # the daemon closed the command pipe: a retired worker exits cleanly
            if self.spawner.exit_on_eof:
                self.exit(exit_code(0))
            else:
                self._close_cmd()
            return
        for message in self._decoder.feed(data):
            self.received.append(message)
            if message["t"] == m.FORK:  # worker/fork.py: a child says FORKED, gets INVOKE
                self.forks += 1
                self.child = self.pid * 1000 + self.forks
                if self.spawner.auto_forked:
                    self.send({"t": m.FORKED, "pid": self.child})
            elif message["t"] == m.UNFORK:  # the waiting child exits unused
                self.send({"t": m.REAPED, "pid": self.child, "status": 0, "left": False})
                self.child = None
            elif message["t"] == m.INVOKE:
                self.spawner.on_invoke(self, message)
            elif message["t"] == m.PREFLIGHT:
                self.spawner.on_preflight(self, message)


def echo(worker: FakeWorker, invoke: m.Message) -> None:
    """The default function: 200 with the event's "say" as the body."""
    worker.answer(invoke, body=str(invoke["event"].get("say", "ok")).encode())


def hang(worker: FakeWorker, invoke: m.Message) -> None:
    """A function that never answers."""


def no_problems(worker: FakeWorker, message: m.Message) -> None:
    worker.send({"t": m.PREFLIGHT_RESULT, "problems": []})


class FakeSpawner:
    """A Spawner whose zygote, workers and cgroups are in memory (see the module's doc)."""

    def __init__(self) -> None:
        self.events: SpawnEvents | None = None
        self.zygote_alive = False
        self.zygote_starts = 0
        self.start_error: str | None = None  # the next zygote starts fail with this
        self.start_failures_left = 0  # ... this many times (-1: always)
        self.configs: list[m.WorkerConfig] = []
        self.workers: list[FakeWorker] = []  # every spawn, in order
        self.auto_ready = True  # a new worker says READY at once
        self.layers: dict[str, str] | None = None  # what READY reports (None: every layer)
        self.spawned_late = False  # the zygote's SPAWNED comes only once READY was read
        self.spawn_error: Exception | None = None  # spawn() raises this
        self.spawn_refusal: str | None = None  # the zygote answers SPAWN_FAILED
        self.exit_on_eof = True
        self.on_invoke: Callable[[FakeWorker, m.Message], None] = echo
        self.on_preflight: Callable[[FakeWorker, m.Message], None] = no_problems
        self.group_kills: list[int] = []  # pids SIGKILLed
        self.slot_kills: list[int] = []  # slots whose cgroup was killed
        self.ipc_removals: list[int] = []  # slots whose System V objects were removed
        self.leftovers: set[int] = set()  # slots whose cgroup is not empty
        self.stubborn: set[int] = set()  # slots whose leftovers survive a kill
        self.oom: set[int] = set()  # slots whose cgroup saw an OOM kill
        self.scratch_files: set[int] = set()  # slots whose scratch folder is not empty
        self.auto_forked = True  # a FORK's child says FORKED at once (else the test sends it)
        self.cpu_used: dict[int, float] = {}
        self.task_counts: dict[int, int] = {}
        self._next_pid = 1_000_000  # above any real pid_max default: never a real process

    # -- Spawner -------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.zygote_alive

    @property
    def pid(self) -> int | None:
        return 999_999 if self.zygote_alive else None

    async def start(self, config: m.WorkerConfig, events: SpawnEvents) -> None:
        self.events = events
        self.zygote_starts += 1
        if self.start_error is not None and self.start_failures_left != 0:
            self.start_failures_left -= 1
            raise ZygoteError(self.start_error)
        self.configs.append(config)
        self.zygote_alive = True

    async def configure(self, config: m.WorkerConfig) -> None:
        if not self.zygote_alive:
            raise ZygoteError("the zygote is not running")
        self.configs.append(config)

    async def stop(self) -> None:
        self.zygote_alive = False

    async def spawn(self, slot: int) -> SpawnedPipes:
        if self.spawn_error is not None:
            raise self.spawn_error
        if not self.zygote_alive:
            raise ZygoteError("the zygote is not running")
        self._next_pid += 1
        worker = FakeWorker(self, slot, self._next_pid)
        self.workers.append(worker)
        loop = asyncio.get_running_loop()
        assert self.events is not None
        if self.spawn_refusal is not None:
            worker.exit(exit_code(1), report=False)  # the zygote closes its ends
            loop.call_soon(self.events.on_spawn_failed, slot, self.spawn_refusal)
            return worker.pipes
        if self.auto_ready:
            worker.ready(self.layers)
        if not self.spawned_late:
            loop.call_soon(self.events.on_spawned, slot, worker.pid)
        return worker.pipes

    def kill_group(self, pid: int) -> None:
        self.group_kills.append(pid)
        worker = self.by_pid(pid)
        if worker is not None:
            worker.exit(SIGKILLED)

    def running(self, pid: int) -> bool:
        worker = self.by_pid(pid)
        return worker is not None and worker.alive

    def kill_slot(self, slot: int) -> None:  # the pool runs this in a thread
        self.slot_kills.append(slot)
        if slot not in self.stubborn:
            self.leftovers.discard(slot)

    def slot_empty(self, slot: int) -> bool:
        return slot not in self.leftovers

    def remove_ipc(self, slot: int) -> None:
        self.ipc_removals.append(slot)

    def scratch_has_files(self, slot: int) -> bool:
        return slot in self.scratch_files

    def oom_killed(self, slot: int) -> bool:
        return slot in self.oom

    def tasks(self, slot: int) -> int | None:
        return self.task_counts.get(slot, 1)

    def cpu(self, slot: int) -> float | None:
        return self.cpu_used.get(slot, 0.0)

    # -- for the tests -------------------------------------------------------------------
    def by_pid(self, pid: int) -> FakeWorker | None:
        return next((w for w in self.workers if w.pid == pid), None)

    def live(self) -> list[FakeWorker]:
        return [w for w in self.workers if w.alive]

    def lose_zygote(self, reason: str = "the zygote was killed by SIGKILL") -> None:
        """The zygote dies: its workers die with it (PDEATHSIG), nobody reports them."""
        self.zygote_alive = False
        assert self.events is not None
        self.events.on_zygote_lost(reason)
        for worker in self.live():
            worker.exit(SIGKILLED, report=False)
