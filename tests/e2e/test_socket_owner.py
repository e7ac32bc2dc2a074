"""One daemon per socket: a second `fnd serve` never takes over a live one's sockets.

Binding a unix socket replaces the file that is there; a second fnd (a quick `--dev` check
on the production paths, say) would take the first one's control socket or HTTP socket, and
leave the first unreachable when it exits. A non-root daemon trusts its control folder only
when it is its own and nobody else may write there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fnd.daemon.sandbox.scratch_root import roots_of
from tests.fndserver import FIXTURES, FndServer, running, world_readable_copy


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


# --- a non-root daemon's control folder (/tmp/fnd-<uid>) --------------------------------------

NOBODY = 65534
_AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.mark.root_only  # to act as two users
def test_a_non_root_daemon_refuses_a_control_folder_another_user_made() -> None:
    # Another user (root here) made /tmp/fnd-65534 before the daemon, open to all: whoever
    # made it could swap the daemon's socket for their own and answer its `fnd reload`.
    folder = Path(f"/tmp/fnd-{NOBODY}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    folder.chmod(0o777)
    project = world_readable_copy(FIXTURES / "ops")
    try:
        # The default control path of uid 65534: no --control.
        serve = subprocess.Popen(
            [*_AS_NOBODY, sys.executable, "-P", "-m", "fnd.cli", "serve", str(project),
             "--port", "0", "--log-format", "json"], cwd="/", stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, stderr = serve.communicate(timeout=60)
        finally:
            serve.kill()
            serve.wait()
        assert serve.returncode == 1, stderr
        assert (f"control folder {folder} is owned by uid 0, not by this user (uid {NOBODY})"
                in stderr), stderr
        assert "--control" in stderr, stderr  # names the way out
        assert os.listdir(folder) == []  # no socket of fnd's left in the other user's folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(project.parent, ignore_errors=True)


@pytest.mark.root_only
def test_a_non_root_daemon_refuses_its_own_control_folder_when_others_may_write() -> None:
    folder = Path(tempfile.mkdtemp(prefix="fnd-test-control-"))
    os.chown(folder, NOBODY, NOBODY)
    folder.chmod(0o770)
    project = world_readable_copy(FIXTURES / "ops")
    try:
        refused = FndServer(project, ["--control", str(folder / "control.sock")],
                            wrap=lambda command: [*_AS_NOBODY, *command])
        line = refused.wait_for(lambda line: line.get("event") in ("ready", "cannot start"), 60)
        assert line["event"] == "cannot start", line
        assert f"chmod 700 {folder}" in line["reason"], line
        assert refused.process.wait(30) == 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(project.parent, ignore_errors=True)


@pytest.mark.root_only
def test_a_non_root_daemon_serves_from_its_own_private_folders() -> None:
    folder = Path(tempfile.mkdtemp(prefix="fnd-test-control-"))
    os.chown(folder, NOBODY, NOBODY)  # mkdtemp made it 0700
    project = world_readable_copy(FIXTURES / "ops")
    try:
        fnd = FndServer(project, ["--control", str(folder / "control.sock")],
                        wrap=lambda command: [*_AS_NOBODY, *command])
        fnd.control = str(folder / "control.sock")
        try:
            fnd.wait_ready()
            assert fnd.get("/hello").text == "hello"
            assert fnd.status()["pid"] == fnd.process.pid
            [scratch] = roots_of(fnd.process.pid)
            st = os.lstat(scratch)
            assert (st.st_uid, st.st_mode & 0o777) == (NOBODY, 0o700), scratch
        finally:
            fnd.stop()
        assert roots_of(fnd.process.pid) == []  # removed at stop
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(project.parent, ignore_errors=True)
