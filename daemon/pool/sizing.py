"""The pool's sizing policy, as plain arithmetic: how many workers to start, how many idle
ones may retire, each worker's recycling limits, how long to wait after failures.

No processes, no clock, no event loop: `Pool` counts its workers and asks; the answers are
unit-tested on their own (docs/pool.md#sizing, docs/pool.md#recycling).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fnd.daemon.config import Config


def to_start(*, live: int, idle: int, starting: int, queued: int, workers_min: int,
             workers_max: int, free_slots: int, closing: bool) -> int:
    """Workers to fork now (0 or more): the minimum, one spare while any is busy, one per
    queued call, never above `workers_max` or the free slots; a closing pool forks only
    what its queue still needs."""
    ready_or_starting = idle + starting
    if closing:
        wanted = queued - ready_or_starting
    else:
        spare = 1 if live > ready_or_starting else 0  # some worker is busy
        wanted = max(queued + spare - ready_or_starting, workers_min - live)
    return max(0, min(wanted, workers_max - live, free_slots))


def may_retire(*, live: int, idle: int, starting: int, workers_min: int) -> int:
    """Idle workers that may retire (if idle long enough): never below `workers_min`, and
    while any worker is busy one idle spare stays."""
    busy = live - idle - starting
    return max(0, min(live - workers_min, idle - (1 if busy > 0 else 0)))


def backoff(failures: int, first: float, most: float) -> float:
    """Seconds to wait after `failures` (1 or more) failures in a row: doubling from
    `first`, at most `most`."""
    return min(most, first * 2.0 ** (failures - 1))


@dataclass(frozen=True, slots=True)
class Recycling:
    """One worker's recycling limits: replaced after `max_requests` calls or `max_age`
    seconds (0: never), each drawn with jitter so that workers started together do not all
    leave together."""

    max_requests: int = 0
    max_age: float = 0.0

    @classmethod
    def draw(cls, config: Config) -> Recycling:
        age = config.max_worker_age * random.uniform(1.0, 1.1) if config.max_worker_age else 0.0
        requests = config.max_requests and (
            config.max_requests + random.randint(0, max(0, config.max_requests_jitter))
        )
        return cls(requests, age)

    def too_old(self, age: float) -> bool:
        """Past its age limit at `age` seconds (the per-call check: WorkerProc.recycle_due)."""
        return bool(self.max_age) and age >= self.max_age
