"""The pool's sizing policy (daemon/pool/sizing.py) and death explanations
(daemon/pool/deaths.py): plain arithmetic, no pool, no loop, no processes."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from fnd.daemon.config import Config
from fnd.daemon.pool import deaths, sizing
from fnd.daemon.pool.sizing import Recycling

pytestmark = pytest.mark.unit


def _start(**counts: Any) -> int:
    base: dict[str, Any] = {"live": 0, "idle": 0, "starting": 0, "queued": 0, "workers_min": 1,
                            "workers_max": 4, "free_slots": 8, "closing": False}
    return sizing.to_start(**(base | counts))


def test_to_start_fills_the_minimum() -> None:
    assert _start(workers_min=3) == 3
    assert _start(workers_min=3, live=1, idle=1) == 2


def test_to_start_keeps_one_spare_while_busy() -> None:
    assert _start(live=1) == 1  # one busy, nothing ready: fork the spare
    assert _start(live=2, idle=1) == 0  # the spare is there
    assert _start(live=2, starting=1) == 0  # the spare is on its way


def test_to_start_one_per_queued_call_up_to_the_bounds() -> None:
    assert _start(live=2, queued=2) == 2  # two busy: two queued plus a spare, capped at max
    assert _start(live=1, queued=5) == 3  # workers_max
    assert _start(live=1, queued=5, free_slots=1) == 1  # the slots
    assert _start(live=4, queued=5) == 0


def test_to_start_while_closing_only_serves_the_queue() -> None:
    assert _start(closing=True, workers_min=3) == 0
    assert _start(closing=True, live=1, queued=2, starting=1) == 1


def test_may_retire_keeps_the_minimum_and_a_spare() -> None:
    assert sizing.may_retire(live=4, idle=4, starting=0, workers_min=1) == 3
    assert sizing.may_retire(live=4, idle=2, starting=0, workers_min=1) == 1  # 2 busy: a spare
    assert sizing.may_retire(live=3, idle=1, starting=0, workers_min=1) == 0
    assert sizing.may_retire(live=2, idle=2, starting=0, workers_min=2) == 0
    assert sizing.may_retire(live=3, idle=2, starting=1, workers_min=0) == 2  # nothing busy


def test_backoff_doubles_up_to_its_ceiling() -> None:
    assert [sizing.backoff(n, 0.05, 2.0) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]
    assert sizing.backoff(10, 0.05, 2.0) == 2.0


def _config(**settings: Any) -> Config:
    return Config(project_dir=Path("/nonexistent"), **settings)


def test_recycling_draws_jittered_limits() -> None:
    for _ in range(50):
        drawn = Recycling.draw(_config(max_requests=100, max_requests_jitter=10,
                                       max_worker_age=60.0))
        assert 100 <= drawn.max_requests <= 110
        assert 60.0 <= drawn.max_age <= 66.0
    assert Recycling.draw(_config(max_requests=0, max_worker_age=0)) == Recycling()


def test_recycling_age_limit() -> None:
    limits = Recycling(max_requests=3, max_age=10.0)
    assert limits.too_old(10.0) and not limits.too_old(9.9)
    assert not Recycling().too_old(10.0**6)  # 0: never


# Wait statuses: a signal number alone is "killed by it", code << 8 is "exited with code".
@pytest.mark.parametrize(("status", "oom", "closed_early", "was_ready", "failure", "cause"), [
    (int(signal.SIGSEGV), False, False, True, None, deaths.SIGNAL),
    (3 << 8, False, False, True, None, deaths.EXIT),
    (None, True, False, True, None, deaths.OOM),
    (int(signal.SIGKILL), False, True, True, None, deaths.PROTOCOL),
    (None, False, True, True, None, deaths.PROTOCOL),
    (int(signal.SIGSEGV), False, True, True, None, deaths.SIGNAL),  # not our SIGKILL
    (1 << 8, False, False, False, "cannot import", deaths.START_FAILED),
])
def test_explain_a_death(status: int | None, oom: bool, closed_early: bool, was_ready: bool,
                         failure: str | None, cause: str) -> None:
    assert deaths.explain(status, oom, closed_early=closed_early, was_ready=was_ready,
                          failure=failure)[0] == cause


def test_explain_a_failed_start_in_words() -> None:
    assert deaths.explain(1 << 8, False, closed_early=False, was_ready=False,
                          failure="cannot import") == (deaths.START_FAILED, "cannot import")
    assert deaths.explain(1 << 8, False, closed_early=False, was_ready=False, failure=None) == (
        deaths.START_FAILED, "worker exited with code 1 before it was ready")
