"""The shapes of what `fnd status` and the metrics read: the daemon's status and the pool's
snapshot, as TypedDicts.

The daemon builds them (``Daemon.status``, ``Pool.snapshot``, ``WorkerProc.snapshot``) and
``fnd.ctl.status_view`` reads them, so mypy checks every key on both ends. On the wire (the
control socket) they travel as JSON; the reader still uses ``.get`` with a default, as an answer
may come from another version of fnd.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class WorkerCounts(TypedDict):
    idle: int
    busy: int  # an old generation's worker finishing its call included
    starting: int
    min: int
    max: int
    stuck: int  # still alive past their time limit or kill


class WorkerRow(TypedDict):
    """One worker as ``fnd status`` lists it."""

    pid: int | None  # None until it is ready
    slot: int
    state: str
    leaving: str | None  # why it is leaving (daemon.pool.deaths), None while it serves
    generation: int
    function: str | None  # the call it runs, if busy
    invocation: str | None
    busy_for: float | None  # seconds
    idle_for: float | None  # seconds
    served: int
    rss: int | None  # bytes: peak RSS the worker reported (`fnd status` reads the current)
    cpu: float | None  # seconds (`fnd status` reads the current)
    layers: dict[str, str]  # the sandbox report


class PoolSnapshot(TypedDict):
    workers: WorkerCounts
    queue: int
    queue_longest_wait: float  # seconds
    per_worker: list[WorkerRow]
    zygote_pid: int | None
    generation: int
    now: float  # time.perf_counter() when taken


class UidStatus(TypedDict):
    """The worker uid range the daemon holds (docs/sandbox.md)."""

    first: int
    last: int | None  # None: not held (the range may overlap another fnd's)
    automatic: bool
    held: NotRequired[bool]


class Status(TypedDict):
    """``Daemon.status()``: the control socket's ``status`` answer, less its ``ok``."""

    version: str
    pid: int
    uptime: float  # seconds
    listen: str
    project: str
    sandbox: str
    sandbox_warnings: list[str]
    uids: UidStatus | None  # None: workers keep the daemon's uid (not root)
    # What holds a slot's processes: "cgroup v1", "cgroup v2", "uid" or "none" (not root).
    accounting: NotRequired[str]
    workers: WorkerCounts
    queue: int
    queue_longest_wait: float
    per_worker: list[WorkerRow]
    totals: dict[str, int]  # "invocations" and every outcome
    recent_crashes: int
    restarts: dict[str, int]  # worker restarts by cause
    broken: list[str]


class StatusAnswer(Status, total=False):
    """What ``fnd status`` receives: the status, or ``ok: false`` and an error."""

    ok: bool
    error: str
