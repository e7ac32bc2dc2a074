"""The start-up self-check's verdicts (daemon/canary.py), with a stand-in pool.

The canary itself runs in a real sandboxed worker in tests/e2e/test_escapes.py; here the
pool's answer is made up, to cover what a healthy host never produces: escapes, a canary
that cannot run, and permissive mode.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from fnd.daemon import canary
from fnd.daemon.calls import Call, Outcome
from fnd.daemon.config import Config
from fnd.daemon.stats import Stats

pytestmark = pytest.mark.unit

REFUSED = {
    "list project root": "EACCES",
    "read .env": "EACCES",
    "read daemon environ": "EACCES",
    "write outside scratch": "EACCES",
    "setuid root": "EPERM",
    "ptrace zygote": "EPERM",
    "signal daemon": "EPERM",
    "netlink socket": "EPERM",
    "vsock socket": "EPERM",
}


class StubWorker:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.killed: list[tuple[str, str]] = []

    def kill(self, reason: str, cause: str) -> None:
        self.killed.append((reason, cause))


class StubPool:
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.workers = {0: StubWorker(4242), 1: StubWorker(4343)}
        self.calls: list[Call] = []
        self.stopped = False
        self.stats = Stats()  # the canary's call writes its log line through it

    async def invoke(self, call: Call) -> Outcome:
        call.worker_pid = 4242
        self.calls.append(call)
        return self.outcome

    async def stop(self, drain_timeout: float | None = None) -> None:
        self.stopped = True


def answer(checks: dict[str, str], environ: tuple[str, ...] = ("PATH", "TMPDIR")) -> Outcome:
    body = json.dumps({"checks": checks, "environ": list(environ)}).encode()
    return Outcome(200, [("Content-Type", "application/json")], body, "ok")


def run(pool: StubPool, project: Path, sandbox: str = "strict") -> canary.SelfCheck:
    config = Config(project_dir=project, sandbox=sandbox)
    return asyncio.run(canary.self_check(pool, config))  # type: ignore[arg-type]


def test_the_canary_call_carries_no_secrets_and_names_the_hidden_files(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("AUTH_TOKEN=x\n")
    pool = StubPool(answer(REFUSED))
    result = run(pool, tmp_path)
    call = pool.calls[0]
    assert call.function == {"name": canary.ROUTE, "file": canary.FUNCTION_FILE}
    assert Path(canary.FUNCTION_FILE).is_file()
    assert call.context == {}
    assert call.event["hidden"] == [".env"]  # fnd.toml does not exist here
    assert result.escapes() == [] and result.error is None
    assert result.checks["see daemon environment"] == "hidden"
    assert not pool.stopped and pool.workers[0].killed == []


def test_an_escape_stops_a_strict_start_and_kills_that_worker(tmp_path: Path) -> None:
    pool = StubPool(answer({**REFUSED, "ptrace zygote": "ok"}))
    with pytest.raises(canary.SelfCheckFailed, match=r"ptrace zygote \(ok\)"):
        run(pool, tmp_path)
    assert pool.stopped
    assert pool.workers[0].killed and pool.workers[1].killed == []


def test_an_escape_is_a_warning_in_permissive_mode(tmp_path: Path) -> None:
    pool = StubPool(answer({**REFUSED, "read .env": "ok"}))
    result = run(pool, tmp_path, sandbox="permissive")
    assert result.escapes() == ["read .env"]
    assert not pool.stopped
    assert pool.workers[0].killed[0][1] == canary.KILL_CAUSE  # never reused


def test_a_leaked_daemon_variable_is_an_escape(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("FND_OPERATOR_SECRET", "s")
    pool = StubPool(answer(REFUSED, environ=("PATH", "FND_OPERATOR_SECRET")))
    with pytest.raises(canary.SelfCheckFailed, match="FND_OPERATOR_SECRET"):
        run(pool, tmp_path)


def test_a_canary_that_cannot_run_stops_a_strict_start(tmp_path: Path) -> None:
    pool = StubPool(Outcome(502, [], b"function crashed\n", "crash", "function crashed"))
    with pytest.raises(canary.SelfCheckFailed, match="could not run: status 502"):
        run(pool, tmp_path)
    assert pool.stopped


def test_signalling_the_daemon_is_tolerated_only_without_root(monkeypatch: Any) -> None:
    monkeypatch.setattr(canary.os, "geteuid", lambda: 0)
    assert canary.tolerated_escapes() == frozenset()
    monkeypatch.setattr(canary.os, "geteuid", lambda: 1000)
    assert canary.tolerated_escapes() == {"signal daemon"}
