"""The budget of large answers held for clients (daemon/http/answer_stream.py)."""

from __future__ import annotations

import pytest

from fnd.daemon.http.answer_stream import AnswerBudget

pytestmark = pytest.mark.unit

MB = 1024 * 1024


def test_the_budget_refuses_what_would_go_over_and_counts_nothing_for_it() -> None:
    budget = AnswerBudget(10 * MB, trim=lambda: None)
    assert budget.reserve(4 * MB) and budget.reserve(4 * MB)
    assert not budget.reserve(4 * MB)
    assert budget.held == 8 * MB
    budget.release(4 * MB)
    assert budget.reserve(2 * MB) and budget.held == 6 * MB


def test_the_heap_is_trimmed_once_a_burst_is_over_never_per_small_answer() -> None:
    trims: list[int] = []
    budget = AnswerBudget(64 * MB, trim=lambda: trims.append(1))
    for _ in range(3):  # answers below the burst size come and go: no trim
        budget.reserve(1 * MB)
        budget.release(1 * MB)
    assert trims == []
    for _ in range(5):
        budget.reserve(4 * MB)
    for _ in range(4):
        budget.release(4 * MB)
    assert trims == []  # still held
    budget.release(4 * MB)
    assert trims == [1]
    budget.reserve(1 * MB)
    budget.release(1 * MB)
    assert trims == [1]
