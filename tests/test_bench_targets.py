"""bench/peers.py's verdicts for issue #25's targets: each computed from one run's rows."""

from __future__ import annotations

import pytest

from bench.peers import Row, speed_targets

pytestmark = pytest.mark.unit


def _row(rps: float, p50: float = 1.0) -> Row:
    return Row(rps=rps, rps_min=rps, rps_max=rps, p50=p50, p99=p50, peak_pss=0, errors=0)


def _verdicts(rows: dict[tuple[str, str, int], Row]) -> list[str]:
    return [line.split()[0] for line in speed_targets(rows)]


def test_nothing_run_is_not_a_verdict() -> None:
    assert set(_verdicts({})) == {"n/a"}


def test_each_target_passes_at_its_bound_and_fails_below_it() -> None:
    rows = {
        ("twilio-run-fast", "hello", 1): _row(1000), ("fnd", "hello", 1): _row(1200, p50=0.25),
        ("twilio-run-fast", "json", 1): _row(1000), ("fnd", "json", 1): _row(1199),
        ("twilio-run-fast", "hello", 64): _row(1000), ("fnd", "hello", 64): _row(1500),
        ("twilio-run-fast", "json", 64): _row(1000), ("fnd", "json", 64): _row(1400),
        ("bare-aiohttp", "hello", 1): _row(9000, p50=0.10),
        ("baseline-isolated", "hello", 64): _row(100), ("fnd-isolated", "hello", 64): _row(500),
        ("fnd-isolated", "hello", 1): _row(520), ("twilio-run", "hello", 1): _row(2.0),
    }
    assert _verdicts(rows) == ["PASS", "FAIL", "PASS", "FAIL", "PASS", "PASS", "PASS"]
    rows[("bare-aiohttp", "hello", 1)] = _row(9000, p50=0.09)
    rows[("fnd-isolated", "hello", 64)] = _row(499)
    rows[("twilio-run", "hello", 1)] = _row(2.1)
    assert _verdicts(rows)[4:] == ["FAIL", "FAIL", "FAIL"]


def test_a_peer_that_answered_nothing_gives_no_ratio() -> None:
    rows = {("fnd-isolated", "hello", 1): _row(500), ("twilio-run", "hello", 1): _row(0.0)}
    assert _verdicts(rows)[-1] == "n/a"
