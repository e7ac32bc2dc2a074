"""Prometheus text exposition format 0.0.4, written by hand (docs/operating.md#5-metrics).

The format is a few lines per family (`# HELP`, `# TYPE`, then `name{label="value"} number`),
so a dependency would buy nothing. Counters and histograms come from Stats (kept in this
process); gauges about the pool come from the status the control socket serves
(daemon/ops/status.py); process_* figures about the daemon itself are read from /proc at
scrape time, with the names, help and units of prometheus-client's process collector.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Literal

from fnd import __version__
from fnd.daemon.ops.status import Status
from fnd.daemon.pool import deaths
from fnd.daemon.stats import OUTCOMES, Histogram, Stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WORKER_STATES: tuple[Literal["starting", "idle", "busy"], ...] = ("starting", "idle", "busy")

Sample = tuple[Mapping[str, str], float]


def render_metrics(stats: Stats, status: Status, functions: Iterable[str] = (),
                   proc: str = "/proc/self") -> str:
    """The metrics text. Counters and the duration histogram have a series from start, at 0,
    for every function in ``functions`` (every outcome) and for every restart cause: a query
    or an alert on a series that does not exist yet silently says nothing. ``proc`` is the
    /proc folder of the process the process_* figures describe."""
    lines: list[str] = []
    functions = list(functions)
    by_function = Counter({(fn, outcome): 0 for fn in functions for outcome in OUTCOMES})
    by_function.update(stats.by_function)
    restarts = Counter(dict.fromkeys(deaths.COUNTED, 0))
    restarts.update(stats.restarts)
    _family(lines, "fnd_build_info", "gauge", "fnd version, always 1.",
            [({"version": str(status.get("version", __version__))}, 1)])
    uptime = status.get("uptime")
    _family(lines, "fnd_uptime_seconds", "gauge", "Seconds since the daemon started.",
            [({}, float(uptime) if uptime is not None else time.time() - stats.started_at)])
    _family(lines, "fnd_invocations_total", "counter",
            "Requests by function (\"-\" when none matched) and outcome.",
            [({"function": fn, "outcome": outcome}, n)
             for (fn, outcome), n in sorted(by_function.items())])
    durations = dict.fromkeys(functions, Histogram()) | stats.durations
    _histogram(lines, "fnd_invocation_duration_seconds",
               "Time from request to response for requests that went to the worker pool, "
               "by function.",
               [({"function": fn}, durations[fn]) for fn in sorted(durations)])
    _histogram(lines, "fnd_queue_wait_seconds",
               "Time a request waited for a free worker.", [({}, stats.queue_wait)])
    workers = status.get("workers") or {}
    _family(lines, "fnd_workers", "gauge", "Workers by state.",
            [({"state": state}, workers.get(state, 0)) for state in WORKER_STATES])
    _family(lines, "fnd_workers_min", "gauge", "Configured warm workers (workers_min).",
            [({}, workers.get("min", 0))])
    _family(lines, "fnd_workers_max", "gauge", "Configured most workers (workers_max).",
            [({}, workers.get("max", 0))])
    _family(lines, "fnd_queue_length", "gauge", "Requests waiting for a worker.",
            [({}, status.get("queue", 0))])
    if status.get("queue_longest_wait") is not None:
        _family(lines, "fnd_queue_longest_wait_seconds", "gauge",
                "How long the oldest queued request has waited.",
                [({}, status["queue_longest_wait"])])
    _family(lines, "fnd_worker_restarts_total", "counter", "Worker restarts by reason.",
            [({"reason": reason}, n) for reason, n in sorted(restarts.items())])
    _process_families(lines, proc)
    return "\n".join(lines) + "\n"


# -- process_*: prometheus-client's process collector, without the dependency ---------------

@dataclass(frozen=True)
class ProcessFigures:
    cpu_seconds: float  # user + system
    resident_bytes: int
    virtual_bytes: int
    start_time: float  # seconds since the epoch
    open_fds: int
    max_fds: int | None  # None: unlimited


def read_process(proc: str = "/proc/self") -> ProcessFigures | None:
    """The figures of the process whose /proc folder is ``proc``; None without a usable /proc
    (not Linux), and then the process_* families are left out, as prometheus-client does."""
    try:
        with open(os.path.join(proc, "stat"), "rb") as stat:
            # After the ")" that ends the command name (which may hold spaces), field 3 on:
            # proc(5) numbers utime 14, stime 15, starttime 22, vsize 23, rss 24.
            fields = stat.read().rpartition(b")")[2].split()
        with open(os.path.join(proc, "limits"), "rb") as limits:
            soft = next(line.split()[3] for line in limits if line.startswith(b"Max open files"))
        open_fds = len(os.listdir(os.path.join(proc, "fd")))
        boot = _boot_time(os.path.dirname(proc.rstrip("/")) or "/")
        ticks, page = _ticks_and_page()
        return ProcessFigures(
            cpu_seconds=(int(fields[11]) + int(fields[12])) / ticks,
            resident_bytes=int(fields[21]) * page,
            virtual_bytes=int(fields[20]),
            start_time=boot + int(fields[19]) / ticks,
            open_fds=open_fds,
            max_fds=None if soft == b"unlimited" else int(soft),
        )
    except (OSError, StopIteration, IndexError, ValueError):
        return None


@cache
def _boot_time(proc_root: str) -> float:
    with open(os.path.join(proc_root, "stat"), "rb") as stat:
        return float(next(line.split()[1] for line in stat if line.startswith(b"btime ")))


@cache
def _ticks_and_page() -> tuple[int, int]:
    return os.sysconf("SC_CLK_TCK"), resource.getpagesize()


def _process_families(lines: list[str], proc: str) -> None:
    figures = read_process(proc)
    if figures is None:
        return
    _family(lines, "process_cpu_seconds_total", "counter",
            "Total user and system CPU time spent in seconds.", [({}, figures.cpu_seconds)])
    _family(lines, "process_resident_memory_bytes", "gauge",
            "Resident memory size in bytes.", [({}, figures.resident_bytes)])
    _family(lines, "process_virtual_memory_bytes", "gauge",
            "Virtual memory size in bytes.", [({}, figures.virtual_bytes)])
    _family(lines, "process_start_time_seconds", "gauge",
            "Start time of the process since unix epoch in seconds.", [({}, figures.start_time)])
    _family(lines, "process_open_fds", "gauge",
            "Number of open file descriptors.", [({}, figures.open_fds)])
    if figures.max_fds is not None:
        _family(lines, "process_max_fds", "gauge",
                "Maximum number of open file descriptors.", [({}, figures.max_fds)])


def _family(lines: list[str], name: str, kind: str, help_text: str,
            samples: Iterable[Sample]) -> None:
    lines.append(f"# HELP {name} {_escape_help(help_text)}")
    lines.append(f"# TYPE {name} {kind}")
    lines.extend(_sample(name, labels, value) for labels, value in samples)


def _histogram(lines: list[str], name: str, help_text: str,
               series: Iterable[tuple[Mapping[str, str], Histogram]]) -> None:
    lines.append(f"# HELP {name} {_escape_help(help_text)}")
    lines.append(f"# TYPE {name} histogram")
    for labels, hist in series:
        for bound, n in hist.cumulative():
            lines.append(_sample(name + "_bucket", {**labels, "le": _number(bound)}, n))
        lines.append(_sample(name + "_sum", labels, hist.sum))
        lines.append(_sample(name + "_count", labels, hist.count))


def _sample(name: str, labels: Mapping[str, str], value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    inner = ",".join(f'{key}="{_escape_label(val)}"' for key, val in labels.items())
    return f"{name}{{{inner}}} {_number(value)}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")
