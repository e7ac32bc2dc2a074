"""A real worker in a forked child, spoken to over its pipes, frame by frame.

The child gets the same fds a zygote-made worker has (command pipe, result pipe, fds 1 and
2 on a capture pipe), its own process group (teardown kills everything it started), and
calls ``fnd.worker.loop.serve``. Reads wait on ``select`` with a generous deadline that only
bounds a failure; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnd.daemon.config import SETTINGS
from fnd.protocol.frames import FrameDecoder, write_frame
from fnd.protocol.messages import WorkerConfig
from fnd.worker.loop import serve

FIXTURES = Path(__file__).parent / "fixtures"
DEADLINE = 15.0
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "f" * 32

_ids = itertools.count(1)


def fixture_functions() -> dict[str, str]:
    return {f"/{path.stem}": str(path) for path in sorted(FIXTURES.glob("*.py"))}


def fixture_assets() -> dict[str, str]:
    assets = FIXTURES / "assets"
    return {f"/{path.name}": str(path) for path in sorted(assets.iterdir())}


def base_config(**overrides: Any) -> WorkerConfig:
    config: dict[str, Any] = {
        "project_dir": str(FIXTURES.parent),
        "functions": fixture_functions(),
        "assets": fixture_assets(),
        **{s.name: s.default for s in SETTINGS if s.worker},  # the daemon's defaults
    }
    config.update(overrides)
    return config  # type: ignore[return-value]


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def base_context(**overrides: Any) -> dict[str, Any]:
    context = {
        "ACCOUNT_SID": ACCOUNT_SID,
        "AUTH_TOKEN": AUTH_TOKEN,
        "DOMAIN_NAME": "example.test",
        "PATH": "/",
        "SERVICE_SID": None,
        "ENVIRONMENT_SID": None,
        "GREETING": "hello",
    }
    context.update(overrides)
    return context


@dataclass
class Outcome:
    result: dict[str, Any]
    done: dict[str, Any]
    logs: list[dict[str, Any]] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)  # in arrival order

    @property
    def status(self) -> int:
        return int(self.result["status"])

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(name, value) for name, value in self.result["headers"]]

    @property
    def body(self) -> bytes:
        return bytes(self.result["body"])

    @property
    def text(self) -> str:
        return self.body.decode()

    def lines(self, stream: str | None = None) -> list[str]:
        return [log["line"] for log in self.logs if stream is None or log["stream"] == stream]


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        cmd_r, self.cmd_w = os.pipe()
        self.res_r, res_w = os.pipe()
        self.out_r, out_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child never returns to pytest
            try:
                os.setpgid(0, 0)
                os.dup2(out_w, 1)
                os.dup2(out_w, 2)
                for fd in (self.cmd_w, self.res_r, self.out_r, out_w):
                    os.close(fd)
                serve(cmd_r, res_w, config, {"test": "harness"})
            finally:
                os._exit(99)
        for fd in (cmd_r, res_w, out_w):
            os.close(fd)
        self._decoder = FrameDecoder()
        self._frames: list[dict[str, Any]] = []
        self.status: int | None = None
        self.ready = self.read()

    def send(self, message: dict[str, Any]) -> None:
        write_frame(self.cmd_w, message)

    def read(self, deadline: float = DEADLINE) -> dict[str, Any]:
        """The next frame; fails the test if none arrives within ``deadline`` seconds."""
        end = time.monotonic() + deadline
        while not self._frames:
            remaining = end - time.monotonic()
            ready, _, _ = select.select([self.res_r], [], [], max(0.0, remaining))
            if not ready:
                raise AssertionError(f"no frame from the worker within {deadline} s")
            chunk = os.read(self.res_r, 1 << 16)
            if not chunk:
                raise EOFError(f"worker closed its result pipe; fd 1/2 said: {self.plain()!r}")
            self._frames.extend(self._decoder.feed(chunk))
        return self._frames.pop(0)

    def plain(self) -> str:
        """What reached fds 1 and 2 directly (not as LOG frames) so far."""
        data = b""
        while select.select([self.out_r], [], [], 0)[0]:
            chunk = os.read(self.out_r, 1 << 16)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace")

    def invoke(
        self,
        function: str,
        event: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        timeout: float = 10.0,
        trace: dict[str, str] | None = None,
    ) -> str:
        ident = f"inv-{next(_ids)}"
        file = str(FIXTURES / f"{function}.py")
        self.send(
            {
                "t": "invoke",
                "id": ident,
                "function": {"name": f"/{function}", "file": file},
                "event": event or {},
                "context": base_context() if context is None else context,
                "timeout": timeout,
                "trace": trace or {"traceparent": TRACEPARENT, "tracestate": ""},
            }
        )
        return ident

    def call(self, function: str, event: dict[str, Any] | None = None, **kwargs: Any) -> Outcome:
        """Invoke and collect every frame up to DONE."""
        ident = self.invoke(function, event, **kwargs)
        return self.collect(ident)

    def collect(self, ident: str, until: str = "done") -> Outcome:
        frames: list[dict[str, Any]] = []
        result: dict[str, Any] = {}
        while True:
            frame = self.read()
            frames.append(frame)
            if frame["t"] == "result" and frame["id"] == ident:
                result = frame
                if until == "result":
                    break
            if frame["t"] == "done" and frame["id"] == ident:
                break
        logs = [f for f in frames if f["t"] == "log"]
        done = frames[-1] if frames[-1]["t"] == "done" else {}
        return Outcome(result, done, logs, frames)

    def wait_exit(self, deadline: float = DEADLINE) -> int:
        """The worker's exit code once it exits on its own (its result pipe reaches EOF)."""
        end = time.monotonic() + deadline
        while True:
            ready, _, _ = select.select([self.res_r], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                raise AssertionError("worker did not exit")
            if not os.read(self.res_r, 1 << 16):
                break
        _, status = os.waitpid(self.pid, 0)
        self.status = status
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.status is None:
            with contextlib.suppress(OSError):
                os.waitpid(self.pid, 0)
        for fd in (self.cmd_w, self.res_r, self.out_r):
            with contextlib.suppress(OSError):
                os.close(fd)
