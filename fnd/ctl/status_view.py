"""`fnd status`: the daemon's status (daemon/ops/status.py) as a table, and the health verdict.

Runs in the CLI process, not in the daemon: RSS and CPU of each worker are read here with
psutil (the daemon's status answer stays cheap), and a worker that exits in between is
shown with "-" rather than failing the command.

Health (exit code of `fnd status`; docs/operating.md#4-fnd-status): 0 healthy, 3 degraded
when any of
  - fewer ready workers (idle + busy) than workers_min: requests queue or get 503s;
  - the sandbox is permissive: workers may run with layers off;
  - a crash storm: CRASH_STORM or more workers died under us (crash, OOM, zygote death) in
    the last stats.CRASH_WINDOW seconds, as counted by the daemon in `recent_crashes`;
  - the daemon's answer says ok: false.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import psutil

from fnd.daemon.ops.status import StatusAnswer, WorkerCounts, WorkerRow
from fnd.daemon.stats import CRASH_WINDOW

EXIT_HEALTHY = 0
EXIT_DEGRADED = 3
CRASH_STORM = 5  # worker deaths within CRASH_WINDOW that make the daemon "degraded"


def collect_process_figures(per_worker: Sequence[WorkerRow]) -> list[WorkerRow]:
    """Copies of the per-worker rows with "rss" (bytes) and "cpu" (seconds, user + system)
    read now; None for a worker without a pid or whose process is gone or unreadable."""
    out: list[WorkerRow] = []
    for worker in per_worker:
        row = worker.copy()
        row["rss"] = row["cpu"] = None
        pid = worker.get("pid")
        if isinstance(pid, int) and pid > 0:
            try:
                process = psutil.Process(pid)
                with process.oneshot():  # one read of /proc/PID/stat for both figures
                    row["rss"] = process.memory_info().rss
                    times = process.cpu_times()
                    row["cpu"] = times.user + times.system
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        out.append(row)
    return out


def health_problems(status: StatusAnswer) -> list[str]:
    """Why the daemon is degraded, one phrase per reason; empty when healthy."""
    problems: list[str] = []
    if status.get("ok") is False:
        problems.append(f"daemon reports an error: {status.get('error', 'unknown')}")
    workers = _workers(status)
    ready = int(workers.get("idle", 0)) + int(workers.get("busy", 0))
    wanted = int(workers.get("min", 0))
    if ready < wanted:
        problems.append(f"{ready} ready worker(s), fewer than workers_min {wanted}")
    broken = status.get("broken") or []
    if broken:
        problems.append(f"{len(broken)} function problem(s): {broken[0]}")
    stuck = int(workers.get("stuck", 0))
    if stuck:
        problems.append(f"{stuck} worker(s) still alive past their time limit or kill")
    if status.get("sandbox") == "permissive":
        problems.append("sandbox is permissive")
    crashes = int(status.get("recent_crashes") or 0)
    if crashes >= CRASH_STORM:
        problems.append(f"{crashes} workers crashed in the last {CRASH_WINDOW:g} s")
    return problems


def health_exit_code(status: StatusAnswer) -> int:
    return EXIT_DEGRADED if health_problems(status) else EXIT_HEALTHY


def as_status(answer: Mapping[str, Any]) -> StatusAnswer:
    """The control socket's decoded JSON as the StatusAnswer the daemon built (mypy checks
    the daemon's side; this side reads each field with a default, as another version of fnd
    may leave one out)."""
    return cast(StatusAnswer, answer)


def _workers(status: StatusAnswer) -> WorkerCounts | dict[str, int]:
    """The worker counts; empty when the answer has none (an error, another fnd version)."""
    counts: WorkerCounts | None = status.get("workers")
    return counts or {}


def render_status(status: StatusAnswer) -> str:
    workers = _workers(status)
    totals = status.get("totals") or {}
    per_worker: Sequence[WorkerRow] = status.get("per_worker") or []
    problems = health_problems(status)
    lines = [
        f"fnd {status.get('version', '?')}   pid {status.get('pid', '?')}   "
        f"up {_duration(status.get('uptime'))}",
        _field("listen", str(status.get("listen") or "-")),
        _field("sandbox", str(status.get("sandbox") or "-")),
        _field("uids", _uids(status)),
    ]
    layers = _layers(per_worker)
    if status.get("accounting"):
        # Named first: with "uid" the cgroup layer below reads "n/a: uid accounting".
        layers = ", ".join(p for p in (f"accounting={status['accounting']}", layers) if p)
    if layers:
        lines.append(_field("layers", layers))
    lines += [
        _field("workers", f"{workers.get('idle', 0)} idle, {workers.get('busy', 0)} busy, "
                          f"{workers.get('starting', 0)} starting "
                          f"(min {workers.get('min', '?')}, max {workers.get('max', '?')})"),
        _field("queue", f"{status.get('queue', 0)} waiting, longest wait "
                        f"{_duration(status.get('queue_longest_wait'))}"),
        _field("totals", f"{totals.get('invocations', 0)} invocations, "
                         f"{totals.get('error', 0)} errors, {totals.get('timeout', 0)} timeouts, "
                         f"{totals.get('crash', 0)} crashes, {totals.get('overload', 0)} 503s"),
        _field("restarts", _restarts(status.get("restarts") or {})),
        _field("health", "ok" if not problems else "degraded: " + "; ".join(problems)),
    ]
    if per_worker:
        lines.append("")
        lines += _table(per_worker)
    return "\n".join(lines) + "\n"


def _field(name: str, value: str) -> str:
    return f"{name:<10} {value}"


def _layers(per_worker: Sequence[WorkerRow]) -> str:
    """The sandbox report of one worker (all workers get the same layers; uid differs)."""
    report = next((w["layers"] for w in per_worker if w.get("layers")), None)
    if not report:
        return ""
    return ", ".join(f"{name}={value}" for name, value in report.items())


def _uids(status: StatusAnswer) -> str:
    """The worker uid range this daemon holds (no other fnd on the host uses it)."""
    if "uids" not in status:
        return "-"  # a daemon that does not report it
    uids = status["uids"]
    if not uids:
        return "n/a: not running as root (workers keep the daemon's uid)"
    if uids.get("last") is None:
        return f"from {uids.get('first')} (not held: may overlap another fnd)"
    return f"{uids['first']}-{uids['last']}" + (" (automatic)" if uids.get("automatic") else "")


def _restarts(restarts: Mapping[str, int]) -> str:
    if not restarts:
        return "none"
    return ", ".join(f"{reason} {n}" for reason, n in sorted(restarts.items()))


_COLUMNS = ("PID", "STATE", "FUNCTION", "INVOCATION", "AGE", "SERVED", "RSS", "CPU")


def _table(per_worker: Sequence[WorkerRow]) -> list[str]:
    rows = [_COLUMNS]
    for w in sorted(per_worker, key=lambda w: (w.get("slot") is None, w.get("slot") or 0)):
        cpu = w.get("cpu")
        rows.append((
            _text(w.get("pid")),
            _text(w.get("state")),
            _text(w.get("function")),
            _text(w.get("invocation")),
            _duration(w.get("busy_for")) if w.get("invocation") else "-",
            _text(w.get("served")),
            _bytes(w.get("rss")),
            "-" if cpu is None else f"{cpu:.2f}s",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    minutes, sec = divmod(int(s), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {sec:02d}s"
    return f"{minutes}m {sec:02d}s"


def _bytes(value: Any) -> str:
    if value is None:
        return "-"
    size = float(value)
    if size < 1024:
        return f"{size:.0f}B"
    for unit in ("KiB", "MiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f}{unit}"
    return f"{size / 1024:.1f}GiB"
