"""Counters kept in the front-end, and the one log line per invocation (SPEC 9.6, 8.3)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from daemon import calls
from daemon.logs import get_logger


@dataclass
class Stats:
    started_at: float = field(default_factory=time.time)
    invocations: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)
    log: Any = field(default_factory=lambda: get_logger("fnd.invocation"))

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
    ) -> None:
        self.invocations += 1
        self.outcomes[outcome] += 1
        level = "info" if outcome in (calls.OK, calls.REJECTED) else "warning"
        getattr(self.log, level)(
            "invocation",
            invocation_id=invocation_id,
            method=method,
            path=path,
            function=function,
            status=status,
            outcome=outcome,
            duration_ms=round(duration * 1000, 3),
            queue_wait_ms=round(queue_wait * 1000, 3),
            cpu_ms=None if cpu is None else round(cpu * 1000, 3),
            peak_rss=rss,
            worker_pid=worker_pid,
            reason=reason,
        )

    def worker_restart(self, reason: str) -> None:
        self.restarts[reason] += 1
