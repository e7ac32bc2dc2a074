"""FrontEnd.handle: a bug in the front-end fails one request with a 500, never the connection.

The front-end is real (routing, event, logging); only the pool is a stand-in that raises, as
no request can reach such a failure through a working daemon.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import make_mocked_request

from fnd.daemon import logs
from fnd.daemon.calls import Call, Outcome
from fnd.daemon.config import load_config
from fnd.daemon.http.app import FrontEnd
from fnd.daemon.project import scan_project
from fnd.daemon.stats import Stats

pytestmark = pytest.mark.unit  # no processes, no network, no root


class _BrokenPool:
    async def invoke(self, call: Call) -> Outcome:
        raise KeyError("unexpected")


def _project(tmp_path: Path) -> Path:
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "hello.py").write_text(
        "def handler(context, event, callback):\n    callback(None, 'hi')\n")
    return tmp_path


@pytest.fixture(autouse=True)
def _logging_restored() -> Any:
    # configure_logging is process-wide: later tests must not log through its stderr sink
    # (their lines would come out after pytest's summary).
    yield
    logs._sink.flush()
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


def test_unexpected_exception_is_a_500_with_reason_and_one_log_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    logs.configure_logging("json")
    config = load_config(_project(tmp_path), environ={})

    async def main() -> Any:
        pool: Any = _BrokenPool()
        front = FrontEnd(config, scan_project(config.project_dir), pool, Stats())
        request = make_mocked_request("GET", "/hello", headers={"Host": "fn.example.com"})
        return await front.handle(request)

    response = asyncio.run(main())
    logs._sink.flush()
    assert response.status == 500
    assert response.body == b"internal error: KeyError\n"
    invocation_id = response.headers["X-Fnd-Invocation-Id"]
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    error = next(line for line in lines if line["event"] == "internal error")
    assert error["invocation_id"] == invocation_id
    assert error["error"] == "KeyError: 'unexpected'"
    assert error["traceback"].startswith("Traceback") and "in invoke" in error["traceback"]
    invocation = next(line for line in lines if line["event"] == "invocation")
    assert invocation["invocation_id"] == invocation_id and invocation["status"] == 500
    assert invocation["reason"] == "internal error: KeyError"
