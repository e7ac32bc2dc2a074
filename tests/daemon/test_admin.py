"""The admin listener's probes: what /readyz decides, and what /livez, /readyz and the Server
header look like on the wire (an in-process server; tests/e2e/test_probes.py runs fnd)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest

from fnd.daemon.ops.admin import not_ready_reason, start_admin_server

pytestmark = pytest.mark.unit


def test_ready_when_serving_with_enough_workers() -> None:
    assert not_ready_reason(serving=True, draining=False, ready_workers=2, workers_min=2) is None
    assert not_ready_reason(serving=True, draining=False, ready_workers=5, workers_min=2) is None


def test_not_ready_while_starting() -> None:
    assert not_ready_reason(serving=False, draining=False, ready_workers=2,
                            workers_min=2) == "starting"


def test_not_ready_below_workers_min() -> None:
    assert not_ready_reason(serving=True, draining=False, ready_workers=1,
                            workers_min=2) == "1 of workers_min 2 workers ready"


def test_draining_wins_over_everything() -> None:
    assert not_ready_reason(serving=True, draining=True, ready_workers=4,
                            workers_min=2) == "draining"


Answer = tuple[int, str, str | None]


def _serve(not_ready: Callable[[], str | None], server_header: str,
           paths: list[str]) -> list[Answer]:
    async def scenario() -> list[Answer]:
        runner = await start_admin_server("127.0.0.1", 0, lambda: "x 1\n", not_ready,
                                          server_header)
        try:
            port = runner.addresses[0][1]
            answers = []
            async with aiohttp.ClientSession() as session:
                for path in paths:
                    async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                        answers.append((response.status, await response.text(),
                                        response.headers.get("Server")))
            return answers
        finally:
            await runner.cleanup()

    return asyncio.run(scenario())


def test_livez_and_readyz_when_ready() -> None:
    livez, readyz = _serve(lambda: None, "fnd", ["/livez", "/readyz"])
    assert livez == (200, "ok\n", "fnd")
    assert readyz == (200, "ready\n", "fnd")


def test_readyz_says_why_not() -> None:
    reasons = iter(["draining"])
    [readyz, livez] = _serve(lambda: next(reasons), "fnd", ["/readyz", "/livez"])
    assert readyz == (503, "not ready: draining\n", "fnd")
    assert livez[0] == 200  # alive while draining: no restart in the middle of a drain


def test_server_header_follows_the_setting() -> None:
    answers = _serve(lambda: None, "edge", ["/metrics", "/readyz", "/nothing-here"])
    assert [server for _code, _body, server in answers] == ["edge"] * 3
    answers = _serve(lambda: None, "", ["/metrics", "/livez", "/nothing-here"])
    assert [server for _code, _body, server in answers] == [None] * 3
