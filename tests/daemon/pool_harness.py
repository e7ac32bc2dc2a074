"""Run a real Pool on a FakeSpawner inside one event loop, in milliseconds (no processes)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnd.daemon.calls import Call, Invocation, Outcome
from fnd.daemon.config import Config
from fnd.daemon.pool.pool import Pool
from fnd.daemon.stats import Stats
from fnd.protocol import messages as m
from tests.daemon.fake_spawner import FakeSpawner, FakeWorker

_ids = itertools.count(1)
TEST_LIMIT = 3.0  # one scenario's own deadline: a wedged pool fails, it does not hang


def config(**settings: Any) -> Config:
    base: dict[str, Any] = {"workers_min": 1, "workers_max": 2, "max_requests": 0,
                            "max_worker_age": 0, "sandbox": "strict", "timeout": 1.0}
    return Config(project_dir=Path("/nonexistent"), **(base | settings))


def call(say: str = "hi", timeout: float = 1.0, isolated: bool = False,
         function: str = "/f", transport: Any = None, stats: Stats | None = None) -> Call:
    invocation_id = f"inv-{next(_ids)}"
    invocation = Invocation(stats or Stats(), invocation_id, "GET", function,
                            time.perf_counter(), None, function)
    return Call(
        invocation=invocation, id=invocation_id,
        function={"name": function, "file": "/p/f.py"}, event={"say": say}, context={},
        timeout=timeout, result=asyncio.get_running_loop().create_future(),
        isolated=isolated, transport=transport,
    )


async def until(condition: Callable[[], object], limit: float = 1.0) -> None:
    """Wait (polling the loop) until `condition()` is true; fail after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


@dataclass
class Scene:
    pool: Pool
    fake: FakeSpawner
    stats: Stats
    fatal: list[str] = field(default_factory=list)

    async def invoke(self, say: str = "hi", **kw: Any) -> Outcome:
        return await self.pool.invoke(call(say, stats=self.stats, **kw))

    def start(self, **kw: Any) -> asyncio.Task[Outcome]:
        """Invoke in the background (the test answers or watches it)."""
        return asyncio.ensure_future(self.invoke(**kw))


Body = Callable[[Scene], Awaitable[None]]


def run(body: Body, fake: FakeSpawner | None = None, start: bool = True,
        **settings: Any) -> Scene:
    """Start a pool on `fake` with `settings`, run `body`, stop the pool; return the scene."""
    scene: list[Scene] = []

    async def main() -> None:
        spawner = fake or FakeSpawner()
        stats = Stats()
        fatal: list[str] = []
        pool = Pool(config(**settings), {}, stats, spawner, on_fatal=fatal.append)
        scene.append(Scene(pool, spawner, stats, fatal))
        if start:
            await pool.start(timeout=1.0)
        try:
            await asyncio.wait_for(body(scene[0]), TEST_LIMIT)
        finally:
            await pool.stop(drain_timeout=0)
            for worker in spawner.workers:  # fds of workers the test left alive
                worker.exit(0, report=False)

    asyncio.run(main())
    return scene[0]


def holding(fake: FakeSpawner) -> list[tuple[FakeWorker, m.Message]]:
    """Make every worker hold its calls; the test answers them from the returned list."""
    held: list[tuple[FakeWorker, m.Message]] = []
    fake.on_invoke = lambda worker, invoke: held.append((worker, invoke))
    return held
