"""sd_notify, the watchdog and socket activation against real sockets
(docs/operating.md#2-the-systemd-service, docs/operating.md#optional-socket-activation)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from fnd.daemon.ops import systemd
from fnd.daemon.ops.systemd import Notifier, listen_fds, watchdog_loop

DEADLINE = 5.0  # generous upper bound for anything that should happen "now"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts outside systemd, with nothing taken yet."""
    for name in systemd._VARIABLES:
        monkeypatch.delenv(name, raising=False)
    systemd._taken.clear()
    yield
    systemd._taken.clear()


@pytest.fixture
def short_dir() -> Iterator[str]:
    # A unix socket path must fit in 108 bytes; pytest's tmp_path may not.
    path = tempfile.mkdtemp(prefix="fnd-sd-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def notify_socket(short_dir: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = os.path.join(short_dir, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


def receive(sock: socket.socket, timeout: float = DEADLINE) -> bytes:
    sock.settimeout(timeout)
    return sock.recv(4096)


def drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.recv(4096)


# -- sd_notify ------------------------------------------------------------------------------

def test_outside_systemd_everything_is_a_noop() -> None:
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog_interval() is None
    assert listen_fds() == []


def test_sends_the_exact_datagrams(notify_socket: socket.socket) -> None:
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready()
    assert receive(notify_socket) == b"READY=1"
    notifier.status("2 idle, 1 busy\nqueue 0")
    assert receive(notify_socket) == b"STATUS=2 idle, 1 busy queue 0"
    notifier.watchdog()
    assert receive(notify_socket) == b"WATCHDOG=1"
    notifier.stopping()
    assert receive(notify_socket) == b"STOPPING=1"

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", receive(notify_socket))
    assert match is not None
    assert before <= int(match.group(1)) <= after
    notifier.close()


def test_abstract_socket_names(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"fnd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier()
        assert notifier.ready()
        assert receive(sock) == b"READY=1"
        notifier.close()


def test_a_vanished_notify_socket_is_not_fatal(short_dir: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(short_dir, "nobody-listens"))
    assert Notifier().ready() is False


def test_variables_are_taken_out_of_the_environment(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("WATCHDOG_USEC", "1000000"), ("WATCHDOG_PID", str(os.getpid())),
                        ("LISTEN_FDS", "0"), ("LISTEN_PID", str(os.getpid())),
                        ("LISTEN_FDNAMES", "")):
        monkeypatch.setenv(name, value)
    notifier = Notifier()
    assert not any(name in os.environ for name in systemd._VARIABLES)
    # ... and a child started afterwards (the zygote, in fnd) does not inherit them.
    child = subprocess.run(
        [sys.executable, "-c",
         "import os, json; print(json.dumps(sorted(k for k in os.environ "
         "if k.startswith(('NOTIFY_', 'WATCHDOG_', 'LISTEN_')))))"],
        capture_output=True, text=True, check=True, timeout=30,
    )
    assert json.loads(child.stdout) == []
    # The values were kept for us, whatever order things are asked in.
    assert notifier.watchdog_interval() == 1.0
    assert Notifier().ready()
    assert receive(notify_socket) == b"READY=1"


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("2000000", None, 2.0),
        ("2000000", "self", 2.0),
        ("2000000", "other", None),
        ("0", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch,
                           usec: str, pid: str | None, expected: float | None) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() if pid == "self" else 1))
    assert Notifier().watchdog_interval() == expected


def test_no_watchdog_without_a_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    assert Notifier().watchdog_interval() is None


def test_watchdog_loop_pings_and_stops_while_the_loop_is_blocked(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    notifier = Notifier()
    interval = notifier.watchdog_interval()
    assert interval == 0.2

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    release = threading.Event()

    async def start() -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(watchdog_loop(notifier, interval))

    task = asyncio.run_coroutine_threadsafe(start(), loop).result(DEADLINE)
    try:
        assert receive(notify_socket) == b"WATCHDOG=1"
        assert receive(notify_socket) == b"WATCHDOG=1"

        blocked = threading.Event()

        def stuck() -> None:  # a handler that never yields: the loop is stuck here
            blocked.set()
            release.wait(60)

        loop.call_soon_threadsafe(stuck)
        assert blocked.wait(DEADLINE)
        drain(notify_socket)  # pings sent before the loop got stuck
        # Three whole watchdog intervals (six ping periods) without a single ping.
        with pytest.raises(TimeoutError):
            receive(notify_socket, timeout=3 * interval)

        release.set()
        assert receive(notify_socket) == b"WATCHDOG=1"  # pings resume with the loop
    finally:
        release.set()

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run_coroutine_threadsafe(stop(), loop).result(DEADLINE)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE)
        loop.close()
        notifier.close()


# -- socket activation ----------------------------------------------------------------------

# Lays the passed fds out from 3 on with LISTEN_FDS/LISTEN_PID for its own pid, then execs
# CHILD (same pid): the environment systemd gives a socket-activated service.
LAUNCHER = """
import fcntl, os, sys
fds = [int(a) for a in sys.argv[2:]]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)  # inheritable, like systemd's
    os.close(fd)
os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()),
                  LISTEN_FDNAMES=":".join("s%d" % i for i in range(len(fds))))
os.execv(sys.executable, [sys.executable, "-c", sys.argv[1]])
"""

CHILD = """
import fcntl, json, os, socket
from fnd.daemon.ops.systemd import listen_fds
socks = listen_fds()
report = {
    "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    "socks": [{"fd": s.fileno(), "family": int(s.family), "type": int(s.type),
               "blocking": s.getblocking(),
               "cloexec": bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)}
              for s in socks],
    "second_call": len(listen_fds()),
}
for s in socks:  # serve one connection on each, to show they are the real listeners
    s.settimeout(10)
    conn, _ = s.accept()
    conn.sendall(b"hello from fd %d" % s.fileno())
    conn.close()
print(json.dumps(report), flush=True)
"""


def test_listen_fds_takes_the_sockets_systemd_passes(short_dir: str) -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    port = tcp.getsockname()[1]
    unix_path = os.path.join(short_dir, "http.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen(8)

    child = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, CHILD, str(tcp.fileno()), str(unix.fileno())],
        pass_fds=(tcp.fileno(), unix.fileno()),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    tcp.close()  # from now on only the child holds the listeners
    unix.close()
    try:
        answers = []
        for family, address in ((socket.AF_INET, ("127.0.0.1", port)),
                                (socket.AF_UNIX, unix_path)):
            with socket.socket(family, socket.SOCK_STREAM) as client:
                client.settimeout(DEADLINE * 2)
                client.connect(address)
                answers.append(client.recv(100))
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert answers == [b"hello from fd 3", b"hello from fd 4"]
    report = json.loads(out)
    assert report["env"] == []
    assert report["second_call"] == 0
    assert report["socks"] == [
        {"fd": 3, "family": int(socket.AF_INET), "type": int(socket.SOCK_STREAM),
         "blocking": False, "cloexec": True},
        {"fd": 4, "family": int(socket.AF_UNIX), "type": int(socket.SOCK_STREAM),
         "blocking": False, "cloexec": True},
    ]


def test_listen_fds_meant_for_another_process_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", "1")
    assert listen_fds() == []
    assert "LISTEN_FDS" not in os.environ


def test_listen_fds_without_listen_pid_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert listen_fds() == []
