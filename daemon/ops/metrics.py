"""Prometheus text exposition format 0.0.4, written by hand (docs/operating.md#5-metrics).

The format is a few lines per family (`# HELP`, `# TYPE`, then `name{label="value"} number`),
so a dependency would buy nothing. Counters and histograms come from Stats (kept in this
process); gauges about the pool come from the status the control socket serves
(daemon/ops/status.py).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from aiohttp import web

from fnd import __version__
from fnd.daemon.ops.status import Status
from fnd.daemon.pool import deaths
from fnd.daemon.stats import OUTCOMES, Histogram, Stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WORKER_STATES: tuple[Literal["starting", "idle", "busy"], ...] = ("starting", "idle", "busy")

Sample = tuple[Mapping[str, str], float]


def render_metrics(stats: Stats, status: Status, functions: Iterable[str] = ()) -> str:
    """The metrics text. Counters have a series from start, at 0, for every outcome of every
    function in ``functions`` and for every restart cause: a query or an alert on
    a series that does not exist yet silently says nothing."""
    lines: list[str] = []
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
    _histogram(lines, "fnd_invocation_duration_seconds",
               "Time from request to response for requests that went to the worker pool.",
               stats.duration)
    _histogram(lines, "fnd_queue_wait_seconds",
               "Time a request waited for a free worker.", stats.queue_wait)
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
    return "\n".join(lines) + "\n"


def _family(lines: list[str], name: str, kind: str, help_text: str,
            samples: Iterable[Sample]) -> None:
    lines.append(f"# HELP {name} {_escape_help(help_text)}")
    lines.append(f"# TYPE {name} {kind}")
    lines.extend(_sample(name, labels, value) for labels, value in samples)


def _histogram(lines: list[str], name: str, help_text: str, hist: Histogram) -> None:
    lines.append(f"# HELP {name} {_escape_help(help_text)}")
    lines.append(f"# TYPE {name} histogram")
    for bound, n in hist.cumulative():
        lines.append(_sample(name + "_bucket", {"le": _number(bound)}, n))
    lines.append(_sample(name + "_sum", {}, hist.sum))
    lines.append(_sample(name + "_count", {}, hist.count))


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


def _loopback_host(host: str) -> str:
    """The host itself if it is a loopback address; a clear ValueError otherwise."""
    if host == "localhost":
        return "127.0.0.1"  # don't trust the resolver to keep "localhost" local
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ValueError(
            f"metrics are served on loopback only (127.0.0.1 or ::1), not on {host!r}: "
            "they are unauthenticated; put a proxy in front to expose them"
        )
    return str(address)


async def start_metrics_server(host: str, port: int, render: Callable[[], str]) -> web.AppRunner:
    """Serve GET /metrics on a loopback address; returns the runner (call .cleanup() to stop).

    Port 0 picks a free port: read it back from `runner.addresses`.
    """
    bind = _loopback_host(host)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=render().encode(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, bind, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
