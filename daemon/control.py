"""The control socket: a 0600 unix socket that answers one JSON request per connection.

Requests are one JSON line, e.g. {"cmd": "status"}; the answer is one JSON document.
`fnd status`, `fnd reload` and `fnd metrics` are its clients (``fnd.ctl.client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fnd.daemon import socket_claim

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
_MAX_REQUEST = 64 * 1024


def default_control_path() -> str:
    """$RUNTIME_DIRECTORY (systemd), else /run/fnd as root, else a per-user temp folder."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return str(Path(runtime.split(":")[0]) / "control.sock")
    if os.geteuid() == 0:
        return "/run/fnd/control.sock"
    return f"/tmp/fnd-{os.geteuid()}/control.sock"


class ControlServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        socket_claim.claim(self.path)  # a live fnd there: refuse; a stale file: removed
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            if len(line) > _MAX_REQUEST:
                raise ValueError("request too large")
            request = json.loads(line or b"{}")
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
            answer = await self._handler(request)
        except (ValueError, TimeoutError) as exc:
            answer = {"ok": False, "error": str(exc)}
        with contextlib.suppress(ConnectionError):
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
