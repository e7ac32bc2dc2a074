"""One daemon per socket: a second `fnd serve` never takes over a live one's sockets.

Binding a unix socket replaces the file that is there; a second fnd (a quick `--dev` check
on the production paths, say) would take the first one's control socket or HTTP socket, and
leave the first unreachable when it exits.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.fndserver import running


def _second_serve(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "fnd.cli", "serve", str(project), "--log-format", "json",
         *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_a_second_fnd_on_the_same_control_socket_is_refused() -> None:
    with running("ops") as first:
        second = _second_serve(first.project, "--port", "0", "--control", first.control)
        assert second.returncode != 0
        assert f"another fnd (pid {first.process.pid}) is serving on {first.control}" \
            in second.stderr, second.stderr
        assert first.status()["pid"] == first.process.pid  # still reachable


def test_a_second_fnd_on_the_same_http_socket_is_refused() -> None:
    with running("ops", "--unix", "{dir}/http.sock") as first:
        path = str(first.project.parent / "http.sock")
        other_control = str(first.project.parent / "other-control.sock")
        second = _second_serve(first.project, "--unix", path, "--control", other_control)
        assert second.returncode != 0
        assert f"another fnd (pid {first.process.pid}) is serving on {path}" in second.stderr
        assert first.status()["pid"] == first.process.pid
        with socket.socket(socket.AF_UNIX) as client:  # the first one still answers HTTP
            client.connect(path)
            client.sendall(b"GET /hello HTTP/1.1\r\nHost: fnd\r\nConnection: close\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.1 200")


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as left_over:
        left_over.bind(str(stale))  # bound, never listened on, closed: what a crash leaves
    with running("ops", "--control", str(stale)) as fnd:
        fnd.control = str(stale)
        assert fnd.status()["pid"] == fnd.process.pid
