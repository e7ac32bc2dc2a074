"""Where fnd listens: sockets passed by systemd (LISTEN_FDS), a unix socket, or TCP."""

from __future__ import annotations

import os
import socket

from aiohttp import web

from fnd.daemon import socket_claim
from fnd.daemon.config import Config
from fnd.daemon.systemd import listen_fds


async def start_sites(runner: web.ServerRunner, config: Config) -> str:
    """Start one aiohttp site per listener; return the address to report (and log)."""
    activated = listen_fds()
    if activated:
        # systemd owns these sockets (and their paths): serve them, never unlink them.
        names = []
        for sock in activated:
            await web.SockSite(runner, sock).start()
            names.append(_describe(sock))
        return "systemd:" + ",".join(names)
    if config.unix:
        socket_claim.claim(config.unix)  # never take over another daemon's socket
        await web.UnixSite(runner, config.unix).start()
        os.chmod(config.unix, 0o660)  # nginx reaches it through the group
        return f"unix:{config.unix}"
    host = config.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, config.port))
    sock.listen(1024)
    sock.setblocking(False)
    await web.SockSite(runner, sock).start()
    port = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return f"http://{shown}:{port}"


def _describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"http://[{name[0]}]:{name[1]}"
    return f"http://{name[0]}:{name[1]}"
