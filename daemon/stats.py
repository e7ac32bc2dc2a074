"""Counters kept in the front-end, and the one log line per invocation (docs/operating.md#6-logs).

`record` runs once per request (called by the request's Invocation, daemon/calls.py, the
one owner of its line), so everything here is a dict increment or a bisect: the metrics
text and the status figures are computed from these only when someone asks.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from structlog.typing import FilteringBoundLogger

from fnd.daemon import calls
from fnd.daemon.logs import get_logger, line_writer
from fnd.daemon.pool import deaths

if TYPE_CHECKING:
    from fnd.daemon.ops.otel import Spans

# Upper bounds (seconds) of the latency histograms; +Inf is implied. Hello-world through the
# worker hop is ~0.2 ms and the default time limit is 5 s, so this spans both ends.
BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
NO_FUNCTION = "-"  # the function label for requests that matched no function (404s, assets)
OUTCOMES = (calls.OK, calls.ERROR, calls.TIMEOUT, calls.CRASH, calls.OVERLOAD, calls.REJECTED)
# Worker restarts that mean a worker died under us, as opposed to a planned recycle/reload or
# a kill we decided (timeout, unclean); names from fnd.daemon.pool.deaths. Many of them in a short
# time is a "crash storm".
CRASH_REASONS = deaths.UNPLANNED  # one vocabulary: daemon/pool/deaths.py
CRASH_WINDOW = 60.0  # seconds that recent_crashes() looks back
# fnd's own invocations (the start-up self-check): logged, never counted. No project route can
# start so, since the project scan skips dot names.
INTERNAL_PREFIX = "/.fnd/"


def _ms(seconds: float) -> float:
    """Milliseconds to 3 decimals, as round(seconds * 1000, 3) but without its exact decimal
    conversion (a tenth of the line's bookkeeping): the nearest float to a whole count of µs
    divided by 1000, which prints as short."""
    return round(seconds * 1e6) / 1000


@dataclass
class Histogram:
    """Prometheus-style histogram: per-bucket counts (not cumulative), sum and count."""

    bounds: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) pairs, ending with (inf, count)."""
        pairs: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            pairs.append((bound, running))
        return pairs


@dataclass
class Stats:
    started_at: float = field(default_factory=time.time)
    invocations: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)
    # (function label, outcome) -> count; function labels are known routes or NO_FUNCTION,
    # so the label set stays bounded whatever paths clients ask for.
    by_function: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Requests that went to the pool (a function, not rejected by the daemon up front).
    # Durations by function route: the same bounded label set as by_function, one dict
    # lookup per request; routes_loaded() drops those of functions a reload removed.
    durations: dict[str, Histogram] = field(default_factory=dict)
    queue_wait: Histogram = field(default_factory=Histogram)
    _crash_times: deque[float] = field(default_factory=deque, repr=False)
    log: FilteringBoundLogger = field(default_factory=lambda: get_logger("fnd.invocation"))
    project: str | None = None  # on every invocation line: which instance/project served it
    spans: Spans | None = None  # one OpenTelemetry span per invocation (daemon/ops/otel.py)

    def __post_init__(self) -> None:
        # Made once: the line is written on every request (daemon/logs.py, line_writer).
        context = {} if self.project is None else {"project": self.project}
        self._info = line_writer(self.log, "info", "invocation", context)
        self._warning = line_writer(self.log, "warning", "invocation", context)

    def record(
        self,
        *,
        invocation_id: str,
        method: str,
        path: str,
        status: int,
        outcome: str,
        duration: float,
        queue_wait: float = 0.0,
        cpu: float | None = None,
        rss: int | None = None,
        worker_pid: int | None = None,
        reason: str | None = None,
        function: str | None = None,
        client: str | None = None,
        **fields: str | int,  # only those present: trace, response_bytes, Twilio ids (calls.py)
    ) -> None:
        if function is None or not function.startswith(INTERNAL_PREFIX):
            self.invocations += 1
            self.outcomes[outcome] += 1
            self.by_function[(function or NO_FUNCTION, outcome)] += 1
            if function is not None and outcome != calls.REJECTED:
                hist = self.durations.get(function)
                if hist is None:  # once per route; a request in flight over a reload too
                    hist = self.durations[function] = Histogram()
                hist.observe(duration)
                self.queue_wait.observe(queue_wait)
        write = self._info if outcome == calls.OK or outcome == calls.REJECTED else self._warning
        write({
            "invocation_id": invocation_id,
            "method": method,
            "path": path,
            "function": function,
            "status": status,
            "outcome": outcome,
            "duration_ms": _ms(duration),
            "queue_wait_ms": _ms(queue_wait),
            "cpu_ms": None if cpu is None else _ms(cpu),
            "peak_rss": rss,
            "worker_pid": worker_pid,
            "reason": reason,
            "client": client,
            **fields,
        })

    def routes_loaded(self, functions: Iterable[str]) -> None:
        """The routes served from now on (at start and at each reload): each gets its duration
        histogram, at 0 until its first call, and those of functions no longer served are
        dropped, so the histogram's series follow the project's routes."""
        kept = self.durations
        self.durations = {fn: kept[fn] if fn in kept else Histogram()
                          for fn in functions if not fn.startswith(INTERNAL_PREFIX)}

    def worker_restart(self, reason: str) -> None:
        self.restarts[reason] += 1
        if reason in CRASH_REASONS:
            now = time.monotonic()
            self._crash_times.append(now)
            self._forget_crashes_before(now - CRASH_WINDOW)  # bounded even if nobody asks

    def recent_crashes(self) -> int:
        """Workers that died under us (CRASH_REASONS) in the last CRASH_WINDOW seconds."""
        self._forget_crashes_before(time.monotonic() - CRASH_WINDOW)
        return len(self._crash_times)

    def _forget_crashes_before(self, horizon: float) -> None:
        times = self._crash_times
        while times and times[0] < horizon:
            times.popleft()

    def totals(self) -> dict[str, int]:
        """Invocations and every outcome (zero-filled), as `fnd status` shows them."""
        return {"invocations": self.invocations, **{o: self.outcomes[o] for o in OUTCOMES}}
