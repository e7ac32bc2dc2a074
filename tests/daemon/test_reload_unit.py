"""A reload reads and parses the new generation in a thread: requests are served meanwhile.

The real ``Daemon.reload`` and the real front-end over HTTP; the pool is a stand-in that
switches generations at once. The project scan is held inside the reload until the test has
been answered, so a scan on the event loop would never let the request through (the test then
fails after its generous deadline instead of hanging).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import RawTestServer, TestClient

from fnd.daemon import server
from fnd.daemon.config import Config, load_config
from fnd.daemon.http.app import FrontEnd
from fnd.daemon.pool.pool import FunctionsBroken, PoolError
from fnd.daemon.project import Project, scan_project
from fnd.daemon.stats import Stats
from tests.daemon.fake_pool import FakePool

pytestmark = pytest.mark.unit

DEADLINE = 30.0  # seconds: generous, only ever reached when the loop is blocked
CODE = "def handler(context, event, callback):\n    callback(None, 'hi')\n"


class ReloadingPool(FakePool):
    """Answers calls as FakePool does; a reload switches at once (or fails as told)."""

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0
        self.failure: Exception | None = None

    async def reload(self, config: Config, worker_config: Any, *, switch: Any,
                     checks: Any, known: list[tuple[str, str]],
                     blocking: bool) -> list[tuple[str, str]]:
        if self.failure is not None:
            raise self.failure
        if blocking or (known and not config.allows_broken):
            raise FunctionsBroken(known)
        self.generation += 1
        switch()
        return known

    def snapshot(self) -> dict[str, Any]:
        workers = {"idle": 1, "busy": 0, "starting": 0, "min": 1, "max": 1}
        return {"workers": workers, "queue": 0}


class Sandbox:
    settings: dict[str, Any] = {}

    def grow_uids(self, slots: int) -> None:
        pass


class Notifier:
    def reloading(self) -> None:
        pass

    def ready(self) -> None:
        pass

    def status(self, line: str) -> None:
        pass


def _project(root: Path, files: int) -> Path:
    (root / "functions").mkdir()
    filler = "".join(f"VALUE_{i} = {i}\n" for i in range(2000))  # a large file to parse
    for i in range(files):
        (root / "functions" / f"f{i}.py").write_text(filler + CODE)
    return root


def _daemon(config: Config, pool: ReloadingPool) -> server.Daemon:
    """The parts of a Daemon that a reload uses, without its processes."""
    daemon = object.__new__(server.Daemon)
    project = scan_project(config.project_dir)
    daemon.config, daemon.project, daemon.pool = config, project, pool  # type: ignore[assignment]
    daemon.stats = Stats()
    daemon.front = FrontEnd(config, project, pool, daemon.stats)  # type: ignore[arg-type]
    daemon.sandbox = Sandbox()  # type: ignore[assignment]
    daemon.notifier = Notifier()  # type: ignore[assignment]
    daemon._reload_lock = asyncio.Lock()
    daemon._project_arg, daemon._flags, daemon._config_file = config.project_dir, {}, None
    daemon.broken = []
    return daemon


def test_a_request_is_answered_while_a_reload_parses_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(_project(tmp_path, files=40), environ={})
    scanning, answered = threading.Event(), threading.Event()

    def held_scan(root: Path) -> Project:
        scanning.set()
        if not answered.wait(DEADLINE):  # a scan on the loop: the request never gets in
            raise OSError("the request was not answered while the project was scanned")
        return scan_project(root)

    monkeypatch.setattr(server, "scan_project", held_scan)

    async def main() -> dict[str, Any]:
        pool = ReloadingPool()
        daemon = _daemon(config, pool)
        (tmp_path / "functions" / "new.py").write_text(CODE)
        async with TestClient(RawTestServer(daemon.front.handle)) as client:
            reload = asyncio.create_task(daemon.reload())
            assert await asyncio.to_thread(scanning.wait, DEADLINE)
            response = await client.get("/f0")
            assert response.status == 200
            assert (await client.get("/new")).status == 404  # still the old generation
            answered.set()
            result = await asyncio.wait_for(reload, DEADLINE)
            assert (await client.get("/new")).status == 200
            return result

    result = asyncio.run(main())
    assert result["ok"] and result["generation"] == 1, result


def test_a_failed_reload_is_reported_and_a_bug_is_not_disguised(tmp_path: Path) -> None:
    config = load_config(_project(tmp_path, files=1), environ={})

    async def main() -> None:
        pool = ReloadingPool()
        daemon = _daemon(config, pool)
        pool.failure = PoolError("workers of the new generation did not start")
        assert await daemon.reload() == {
            "ok": False, "error": "workers of the new generation did not start",
            "problems": ["workers of the new generation did not start"]}
        pool.failure = KeyError("a bug")
        with pytest.raises(KeyError):
            await daemon.reload()

    asyncio.run(main())


def test_dev_answers_every_request_with_the_failed_reloads_problems_until_one_succeeds(
    tmp_path: Path,
) -> None:
    root = _project(tmp_path, files=1)
    config = load_config(root, {"dev": True}, environ={})
    broken = root / "functions" / "broken.py"

    async def main() -> None:
        daemon = _daemon(config, ReloadingPool())
        async with TestClient(RawTestServer(daemon.front.handle)) as client:
            (root / "requirements.txt").write_text("left-pad==1.0\n")  # not installed
            broken.write_text("def handler(:\n")
            result = await daemon.reload()
            assert not result["ok"]
            answer = await client.get("/f0")
            text = await answer.text()
            assert answer.status == 500, text
            assert "the last reload failed" in text
            assert "functions/broken.py:1: SyntaxError" in text  # every problem, each a line
            assert "requirements.txt is not installed" in text
            page = await client.get("/f0", headers={"Accept": "text/html,*/*"})
            assert page.headers["Content-Type"].startswith("text/html")
            assert "<li><pre>functions/broken.py:1: SyntaxError" in await page.text()
            (root / "requirements.txt").unlink()
            broken.write_text(CODE)
            assert (await daemon.reload())["ok"]
            assert (await client.get("/f0")).status == 200
            assert (await client.get("/broken")).status == 200

    asyncio.run(main())


def test_outside_dev_a_failed_reload_keeps_the_old_code_serving(tmp_path: Path) -> None:
    root = _project(tmp_path, files=1)
    config = load_config(root, environ={})

    async def main() -> None:
        daemon = _daemon(config, ReloadingPool())
        async with TestClient(RawTestServer(daemon.front.handle)) as client:
            (root / "functions" / "broken.py").write_text("def handler(:\n")
            (root / "functions" / "guarded.protected.py").write_text(CODE)
            result = await daemon.reload()
            assert not result["ok"] and len(result["problems"]) == 2, result
            assert (await client.get("/f0")).status == 200

    asyncio.run(main())
