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

_BACKLOG = 1024
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


class ListenError(OSError):
    """An address fnd cannot listen on; the message names it (``cannot listen on ...``)."""

    def __str__(self) -> str:
        return str(self.strerror)  # without OSError's "[Errno 98]" in front


def tcp_address(host: str, port: int) -> str:
    """``127.0.0.1:3000``, ``[::1]:3000``: as a client would write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_tcp(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``, not yet listening: taken before any worker
    starts, so that a port in use stops ``fnd serve`` at once, naming the address.

    Listening starts in `start_sites`, once the pool is ready: until then a client is
    refused at once rather than kept waiting through the start-up.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _listen_error(tcp_address(host, port), exc) from None
    return sock


def probe_tcp(host: str, port: int) -> None:
    """Raise `ListenError` now if ``host:port`` is taken (for a listener made later)."""
    if port:
        bind_tcp(host, port).close()


def _listen_error(address: str, exc: OSError) -> ListenError:
    reason = (exc.strerror or str(exc)).lower()
    return ListenError(exc.errno or 0, f"cannot listen on {address}: {reason}")


async def start_sites(
    runner: web.ServerRunner, config: Config, bound: socket.socket | None = None
) -> str:
    """Start one aiohttp site per listener; return the address to report (and log).

    ``bound``: the TCP socket of `bind_tcp`, taken earlier; without it, one is bound here.
    """
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
    sock = bound if bound is not None else bind_tcp(host, config.port)
    port = sock.getsockname()[1]
    try:
        sock.listen(_BACKLOG)  # another process may have bound the port since (and listens)
    except OSError as exc:
        sock.close()
        raise _listen_error(tcp_address(host, port), exc) from None
    sock.setblocking(False)
    await web.SockSite(runner, sock).start()
    return f"http://{tcp_address(host, port)}"


def _describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"http://[{name[0]}]:{name[1]}"
    return f"http://{name[0]}:{name[1]}"
