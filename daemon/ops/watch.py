"""Dev mode (docs/pool.md#dev-mode): notice changes under functions/, assets/, .env and the
project's requirements (requirements.txt, the .fnd/deps folder) and its fnd.toml, and reload.

A cheap poll, not inotify: every `interval` seconds a snapshot of (mtime, size) per file is
taken in a thread (a big assets/ folder must not stall the event loop) and compared with the
last one. A change is acted on once two snapshots in a row agree, so an editor's
write-rename-chmod sequence makes one reload, not three.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from fnd.daemon.logs import get_logger

_log = get_logger("fnd.watch")
INTERVAL = 0.5
WATCHED_DIRS = ("functions", "assets")
# .fnd/deps is the folder itself: its mtime moves when `fnd deps` renames a new install in,
# so a dev server retries the reload that requirements.txt's change made fail.
WATCHED_FILES = (".env", "fnd.toml", "requirements.txt", ".fnd/deps")
Snapshot = dict[str, tuple[int, int]]


def _skipped(name: str) -> bool:
    # Editor droppings and bytecode caches are not project changes.
    return name.startswith(".") or name.endswith(("~", ".swp", ".pyc")) or name == "__pycache__"


def snapshot(project_dir: Path) -> Snapshot:
    """(mtime_ns, size) of every watched file, by path relative to the project."""
    seen: Snapshot = {}
    for name in WATCHED_FILES:
        _stat_into(seen, project_dir / name, name)
    for top in WATCHED_DIRS:
        for folder, dirs, files in os.walk(project_dir / top, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not _skipped(d))
            for name in files:
                if not _skipped(name):
                    path = Path(folder, name)
                    _stat_into(seen, path, str(path.relative_to(project_dir)))
    return seen


def _stat_into(seen: Snapshot, path: Path, key: str) -> None:
    try:
        stat = path.stat()
    except OSError:
        return  # absent, or deleted while we looked: absent either way
    seen[key] = (stat.st_mtime_ns, stat.st_size)


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """Paths added, changed or deleted between two snapshots, sorted."""
    return sorted(path for path in before.keys() | after.keys()
                  if before.get(path) != after.get(path))


class Watcher:
    """Polls a project and awaits `on_change(paths)` after each settled change; run() is
    meant to be a task, cancelled to stop."""

    def __init__(self, project_dir: Path, on_change: Callable[[list[str]], Awaitable[object]],
                 interval: float = INTERVAL) -> None:
        self.project_dir = project_dir
        self._on_change = on_change
        self._interval = interval
        self.watching = asyncio.Event()  # set once the first snapshot is taken

    async def run(self) -> None:
        known = await asyncio.to_thread(snapshot, self.project_dir)
        self.watching.set()
        while True:
            await asyncio.sleep(self._interval)
            current = await asyncio.to_thread(snapshot, self.project_dir)
            if current == known:
                continue
            while True:  # settle: wait until a poll sees nothing new
                await asyncio.sleep(self._interval)
                settled = await asyncio.to_thread(snapshot, self.project_dir)
                if settled == current:
                    break
                current = settled
            changed = changes(known, current)
            known = current
            _log.info("project changed", files=changed[:20], count=len(changed))
            try:
                await self._on_change(changed)
            except Exception as exc:  # a failed reload must not stop the watching
                _log.error("reload after a change failed", reason=str(exc))
