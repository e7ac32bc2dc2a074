"""A restart under load through the real nginx fails no request.

As systemd runs it (fnd.socket): the listening unix socket outlives the daemon, so requests
that arrive while one fnd drains and the next starts wait in its backlog. The draining fnd
answers what it has, closes its idle keep-alive connections at once and the busy ones after
their answer ("Connection: close"), so nginx sends nothing more on them.
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

from bench.load import Result, hey
from tests.fndserver import FIXTURES, FndServer, until, world_readable_copy
from tests.nginx import running_nginx

# What systemd does for a socket unit: the socket as fd 3, LISTEN_PID = the server's own pid.
_LAUNCHER = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
             "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
             "os.execv(sys.argv[2], sys.argv[2:])")


def _activated(project: Path, listener: socket.socket) -> FndServer:
    fd = listener.fileno()
    server = FndServer(project, [], wrap=lambda command: [sys.executable, "-c", _LAUNCHER,
                                                          str(fd), *command], pass_fds=(fd,))
    server.wait_ready()
    return server


def test_a_restart_under_load_through_nginx_fails_no_request() -> None:
    project = world_readable_copy(FIXTURES / "ops")
    workdir = Path(tempfile.mkdtemp(prefix="fnd-restart-", dir="/tmp"))
    path = str(workdir / "http.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    Path(path).chmod(0o666)
    listener.listen(1024)
    first = second = None
    try:
        first = _activated(project, listener)
        with running_nginx(path, workdir) as base:
            results: list[Result] = []
            load = threading.Thread(target=lambda: results.append(hey(base + "/hello", 8, 16)))
            load.start()
            until(lambda: first.status()["totals"]["invocations"] > 200, 30, "load running")
            assert first.stop() == 0  # SIGTERM: drain, then exit 0
            second = _activated(project, listener)  # the next one takes over the socket
            load.join(60)
            assert results, "hey did not finish"
            result = results[0]
            served = second.status()["totals"]["invocations"]
        assert served > 0, "the second fnd served nothing: the restart was not under load"
        assert result.errors == {} and set(result.statuses) == {200}, result.line()
    finally:
        for server in (first, second):
            if server is not None and server.process.poll() is None:
                server.stop()
        listener.close()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(project.parent, ignore_errors=True)
