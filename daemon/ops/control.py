"""The control socket: a 0600 unix socket that answers one JSON request per connection.

Requests are one JSON line, e.g. {"cmd": "status"}; the answer is one JSON document.
`fnd status`, `fnd reload` and `fnd metrics` are its clients (``fnd.ctl.client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fnd.daemon.ops import socket_claim

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


class ControlFolderUnsafe(OSError):
    """The control socket's folder belongs to someone else or others may write to it."""


def check_folder(path: str) -> None:
    """Make the socket's folder (0700) if missing; refuse one that is a symlink, is owned by
    another uid, or (not root) is writable by group or others: whoever can write there could
    swap the socket and answer `fnd reload` in fnd's place. Checked on an fd opened
    O_NOFOLLOW; the folder's parent is /tmp (sticky) or root's, so only its owner can swap it
    for another afterwards (docs/operating.md#4-fnd-status)."""
    folder = os.path.dirname(os.path.abspath(path))
    Path(folder).mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ControlFolderUnsafe(f"control folder {folder} is not a folder ({exc.strerror}); "
                                  f"remove it, or choose another with --control") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    euid = os.geteuid()
    if st.st_uid != euid:
        raise ControlFolderUnsafe(
            f"control folder {folder} is owned by uid {st.st_uid}, not by this user (uid "
            f"{euid}): someone else made it; remove it (it is theirs), or choose another "
            f"with --control")
    # Root's own folders are left as they are: a Kubernetes emptyDir (/run/fnd) is 0777, and
    # in that pod only sandboxed workers, which Landlock keeps from writing there, run as others.
    if euid != 0 and st.st_mode & 0o022:
        raise ControlFolderUnsafe(
            f"control folder {folder} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):o}): chmod 700 {folder}, or choose another with "
            f"--control")


class ControlServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        check_folder(self.path)
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
