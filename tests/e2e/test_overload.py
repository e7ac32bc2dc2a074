"""Queue limits: 503 with Retry-After when the queue is full or a request waited too long."""

from __future__ import annotations

import threading

import requests

from tests.fndserver import FndServer, running, until


def _background(fnd: FndServer, path: str, results: list[requests.Response]) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(fnd.get(path)))
    thread.start()
    return thread


def test_queue_full_gives_503_with_retry_after() -> None:
    env = {"FND_QUEUE_MAX": "1"}
    with running("contract", "--workers-min", "1", "--workers-max", "1", env=env) as fnd:
        results: list[requests.Response] = []
        first = _background(fnd, "/slow?s=1.5&tag=a", results)
        until(lambda: fnd.status()["workers"]["busy"] == 1)  # type: ignore[index]
        second = _background(fnd, "/slow?s=0&tag=b", results)
        until(lambda: fnd.status()["queue"] == 1)
        third = fnd.get("/hello")
        assert third.status_code == 503
        assert third.headers["Retry-After"] == "1"
        assert "queue is full" in third.text
        first.join(30)
        second.join(30)
        assert sorted(r.text for r in results) == ["slow a", "slow b"]


def test_queue_timeout_gives_503() -> None:
    env = {"FND_QUEUE_TIMEOUT": "0.3"}
    with running("contract", "--workers-min", "1", "--workers-max", "1", env=env) as fnd:
        results: list[requests.Response] = []
        first = _background(fnd, "/slow?s=2&tag=a", results)
        until(lambda: fnd.status()["workers"]["busy"] == 1)  # type: ignore[index]
        waited = fnd.get("/hello")
        assert waited.status_code == 503 and "within 0.3 s" in waited.text
        first.join(30)
        assert results[0].text == "slow a"
