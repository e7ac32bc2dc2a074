"""The dev-mode watcher's snapshots (daemon/ops/watch.py) and the death causes
(daemon/pool/deaths.py)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from fnd.daemon import logs
from fnd.daemon.ops.watch import Watcher, changes, snapshot
from fnd.daemon.pool import deaths

pytestmark = pytest.mark.unit  # no processes, no network, no root


def _project(tmp_path: Path) -> Path:
    (tmp_path / "functions" / "sub").mkdir(parents=True)
    (tmp_path / "assets").mkdir()
    (tmp_path / "functions" / "a.py").write_text("a")
    (tmp_path / "functions" / "sub" / "b.py").write_text("b")
    (tmp_path / "assets" / "x.txt").write_text("x")
    (tmp_path / ".env").write_text("A=1\n")
    (tmp_path / "other.txt").write_text("not watched")
    return tmp_path


def test_snapshot_covers_functions_assets_and_env_only(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "functions" / "__pycache__").mkdir()
    (project / "functions" / "__pycache__" / "a.cpython-311.pyc").write_text("")
    (project / "functions" / ".a.py.swp").write_text("")
    assert sorted(snapshot(project)) == [
        ".env", "assets/x.txt", "functions/a.py", "functions/sub/b.py",
    ]


def test_snapshot_covers_fnd_toml(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "fnd.toml").write_text("timeout = 5\n")
    before = snapshot(project)
    (project / "fnd.toml").write_text("timeout = 7.5\n")
    assert changes(before, snapshot(project)) == ["fnd.toml"]


def test_requirements_and_a_new_deps_folder_are_changes(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / ".fnd" / "deps").mkdir(parents=True)
    before = snapshot(project)
    (project / "requirements.txt").write_text("humanize\n")
    assert changes(before, snapshot(project)) == ["requirements.txt"]
    before = snapshot(project)
    os.utime(project / ".fnd" / "deps", ns=(0, 0))  # as after `fnd deps` renamed a folder in
    assert changes(before, snapshot(project)) == [".fnd/deps"]


def test_changes_lists_new_changed_and_deleted(tmp_path: Path) -> None:
    project = _project(tmp_path)
    before = snapshot(project)
    (project / "functions" / "a.py").write_text("a, longer")
    (project / "functions" / "sub" / "b.py").unlink()
    (project / "assets" / "y.txt").write_text("y")
    assert changes(before, snapshot(project)) == [
        "assets/y.txt", "functions/a.py", "functions/sub/b.py",
    ]
    assert changes(before, before) == []


def test_watcher_calls_back_once_per_settled_change(tmp_path: Path) -> None:
    project = _project(tmp_path)
    seen: list[list[str]] = []

    async def scenario() -> None:
        changed = asyncio.Event()

        async def on_change(paths: list[str]) -> None:
            seen.append(paths)
            changed.set()

        watcher = Watcher(project, on_change, interval=0.02)
        task = asyncio.create_task(watcher.run())
        await asyncio.wait_for(watcher.watching.wait(), 5)
        env = project / ".env"
        env.write_text("A=2\n")
        os.utime(env, ns=(1, 1))  # a distinct mtime whatever the filesystem's granularity
        await asyncio.wait_for(changed.wait(), 5)
        task.cancel()
        # The log line is written by a timer 5 ms later (daemon/logs.py batches lines); let it
        # run in this test's loop, or it is written at exit, after pytest's summary.
        await asyncio.sleep(2 * logs._FLUSH_WINDOW)

    asyncio.run(scenario())
    assert seen == [[".env"]]


def test_deaths_are_classified_from_the_wait_status() -> None:
    killed = signal.SIGKILL  # a wait status for "killed by signal 9" is the number itself
    assert deaths.classify(int(killed), oom_killed=False) == (
        deaths.SIGNAL, "worker killed by SIGKILL")
    assert deaths.classify(3 << 8, oom_killed=False) == (deaths.EXIT, "worker exited with code 3")
    assert deaths.classify(int(killed), oom_killed=True)[0] == deaths.OOM
    assert deaths.classify(None, oom_killed=False)[0] == deaths.EXIT
    assert deaths.describe_returncode(-9) == "was killed by SIGKILL"
    assert deaths.describe_returncode(1) == "exited with code 1"
