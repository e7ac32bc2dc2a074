"""Where fnd listens: sockets passed by systemd (LISTEN_FDS), a unix socket, or TCP.

Room for ``max_connections`` is made here too (docs/operating.md#slow-clients): the soft
``RLIMIT_NOFILE`` is raised towards the hard one so that the cap, not ``EMFILE`` at accept,
is what a flood of connections meets.
"""

from __future__ import annotations

import os
import resource
import socket

from aiohttp import web

from fnd.daemon.config import Config
from fnd.daemon.ops import socket_claim
from fnd.daemon.ops.systemd import listen_fds

_FD_ROOM = 1024  # descriptors besides client connections: workers' pipes, files, logs


def make_fd_room(max_connections: int) -> str | None:
    """Raise the soft descriptor limit to fit ``max_connections``; a warning if it cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + _FD_ROOM
    if soft >= wanted:
        return None
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    if raised < wanted:
        return (f"max_connections = {max_connections} needs about {wanted} file descriptors; "
                f"RLIMIT_NOFILE allows {raised} (raise LimitNOFILE= in the unit or lower "
                "max_connections), else accept() fails with EMFILE before the cap")
    return None


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
