"""One daemon per socket path: refuse a path another process serves, replace a stale one.

Binding a unix socket where a file exists means removing the file first (asyncio does it
silently). If a running fnd owns that path, the newcomer would take its clients, and when the
newcomer exits the path is gone: the first one can no longer be reached. So before binding,
fnd connects to the path: someone answering → refuse, naming them; nobody → a stale file from
a run that ended without cleaning up, removed. A refused connection is the proof, not a pid:
it holds whatever pid namespace the other daemon runs in.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct


class SocketBusy(OSError):
    """The path belongs to a live server; the message names it."""


def claim(path: str) -> None:
    """Make `path` free to bind, or raise SocketBusy / OSError saying why it is not."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketBusy(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: nobody listens
        return
    except OSError as exc:  # e.g. a full backlog: someone is there
        raise SocketBusy(f"{path} is in use ({exc.strerror}); refusing to replace it") from None
    try:
        pid = _peer_pid(probe)
    finally:
        probe.close()
    raise SocketBusy(f"another {_describe(pid)} is serving on {path}")


def _peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def _describe(pid: int) -> str:
    """'fnd (pid N)' when the listener is fnd, else 'process N (its name)'."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return f"process (pid {pid})"
    if "fnd.cli" in command or "fnd " in command or command.startswith("fnd"):
        return f"fnd (pid {pid})"
    return f"process (pid {pid}, {command.strip()[:60]})"
