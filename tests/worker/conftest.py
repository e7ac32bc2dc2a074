from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.worker.harness import Worker, base_config


@pytest.fixture
def make_worker() -> Iterator[Callable[..., Worker]]:
    """Start workers with config overrides; all are killed (process group) at teardown."""
    workers: list[Worker] = []

    def start(**config: Any) -> Worker:
        worker = Worker(base_config(**config))
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.close()


@pytest.fixture
def worker(make_worker: Callable[..., Worker]) -> Worker:
    return make_worker()
