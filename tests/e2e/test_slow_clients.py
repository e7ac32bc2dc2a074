"""Clients that read slowly or not at all, or send slowly, cannot grow a real `fnd serve`.

docs/operating.md#slow-clients: answers are streamed with back-pressure, a client that takes
nothing for `send_timeout` is cut off, buffered answers are bounded by `max_buffered_mb`,
connections by `max_connections`, request bodies by `body_timeout`, and freed memory goes
back to the system. New settings are given through the environment so that the same test
runs, and fails for the behaviour's sake, on a daemon that predates them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.fndserver import FndServer, running, until

pytestmark = pytest.mark.root_only

BIG = 4 * 1024 * 1024
MB = 1024 * 1024
BIG_REQUEST = b"GET /big HTTP/1.1\r\nHost: slow.example\r\n\r\n"


def _address(fnd: FndServer) -> tuple[str, int]:
    host, _, port = fnd.url.removeprefix("http://").rpartition(":")
    return host, int(port)


def _non_reader(fnd: FndServer) -> socket.socket:
    """A client that asks for the big answer and never reads (a small receive window, so
    the kernel cannot take the answer off the daemon's hands)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(_address(fnd))
    sock.sendall(BIG_REQUEST)
    return sock


def _rss(fnd: FndServer) -> int:
    return int(psutil.Process(fnd.pid).memory_info().rss)


def _big_calls(fnd: FndServer) -> int:
    return sum(1 for line in fnd.lines
               if line.get("event") == "invocation" and line.get("path") == "/big")


def _hello_is_quick(fnd: FndServer) -> None:
    started = time.monotonic()
    response = fnd.get("/hello", timeout=10)
    assert (response.status_code, response.text) == (200, "hello")
    assert time.monotonic() - started < 3


@pytest.fixture
def fnd() -> Iterator[FndServer]:
    with running("slow_clients") as server:
        yield server


def test_a_big_answer_arrives_whole(fnd: FndServer) -> None:
    response = fnd.get("/big")
    assert response.status_code == 200
    assert response.content == b"x" * BIG


def test_150_clients_that_never_read_a_4_mib_answer_do_not_grow_the_daemon(
        fnd: FndServer) -> None:
    for _ in range(3):  # what any daemon allocates once for big answers is in the baseline
        assert len(fnd.get("/big").content) == BIG
    _hello_is_quick(fnd)
    base = _rss(fnd)
    peak = [base]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], _rss(fnd))
            sampling.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients: list[socket.socket] = []
    try:
        clients = [_non_reader(fnd) for _ in range(150)]
        # Every call has run and the daemon did what it does with its answer.
        until(lambda: _big_calls(fnd) >= 3 + 150, timeout=180, what="150 calls of /big")
        _hello_is_quick(fnd)
        hanging = max(peak[0], _rss(fnd)) - base
    finally:
        for sock in clients:
            sock.close()
        sampling.set()
        sampler.join()
    print(f"daemon RSS: base {base / MB:.0f} MB, +{hanging / MB:.0f} MB while 150 clients hang")
    assert hanging < 300 * MB, f"RSS rose by {hanging / MB:.0f} MB while clients hang"
    after: list[int] = []

    def returned() -> bool:
        after.append(_rss(fnd) - base)
        return after[-1] < 150 * MB

    until(returned, timeout=5, what=f"RSS back within 150 MB of base (last {after[-1:]})")
    print(f"daemon RSS after the clients closed: +{after[-1] / MB:.0f} MB")
    _hello_is_quick(fnd)


def test_a_client_that_reads_nothing_is_cut_off_after_send_timeout() -> None:
    with running("slow_clients", env={"FND_SEND_TIMEOUT": "2"}) as fnd:
        sock = _non_reader(fnd)
        with sock:
            line = fnd.wait_for(lambda entry: entry.get("event") == "send timeout", timeout=20)
            assert line["function"] == "/big" and line["invocation_id"]
            assert line["worker_pid"]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            received = 0
            while chunk := _recv(sock):  # what was in flight, then the end of the stream
                received += len(chunk)
            assert received < BIG  # cut off: the answer never completed
        _hello_is_quick(fnd)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 20)
    except ConnectionResetError:
        return b""


def test_answers_beyond_max_buffered_mb_get_503_with_retry_after() -> None:
    with running("slow_clients", env={"FND_MAX_BUFFERED_MB": "9",
                                      "FND_SEND_TIMEOUT": "60"}) as fnd:
        held = [_non_reader(fnd) for _ in range(2)]  # 2 x 4 MiB fit in 9 MB
        try:
            until(lambda: _big_calls(fnd) >= 2, timeout=30, what="two held answers")
            response = fnd.get("/big")
            assert response.status_code == 503, response.status_code
            assert response.headers["Retry-After"] == "1"
            assert "buffered" in response.text
            line = fnd.wait_for(lambda entry: entry.get("event") == "answer refused")
            assert line["function"] == "/big" and line["worker_pid"]
            _hello_is_quick(fnd)  # small answers are not held: always served
        finally:
            for sock in held:
                sock.close()
        # Once the held answers are gone, big answers are served again.
        until(lambda: fnd.get("/big").status_code == 200, timeout=10, what="/big served again")


def test_connections_beyond_max_connections_get_a_503_and_close() -> None:
    with running("slow_clients", env={"FND_MAX_CONNECTIONS": "20"}) as fnd:
        idle = [socket.create_connection(_address(fnd), timeout=10) for _ in range(20)]
        try:
            with socket.create_connection(_address(fnd), timeout=10) as extra:
                answer = b""
                while chunk := extra.recv(4096):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
            assert b"Retry-After: 1\r\n" in answer and b"Connection: close\r\n" in answer
            fnd.wait_for(lambda entry: entry.get("event") == "connection refused")
        finally:
            for sock in idle:
                sock.close()
        until(lambda: _served(fnd), timeout=10, what="served once the idle clients left")


def _served(fnd: FndServer) -> bool:
    try:
        return fnd.get("/hello", timeout=5).status_code == 200
    except OSError:
        return False


def test_a_body_trickled_one_byte_every_2_s_is_cut_off_within_70_s(fnd: FndServer) -> None:
    head = (b"POST /echo_size HTTP/1.1\r\nHost: slow.example\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n")
    with socket.create_connection(_address(fnd), timeout=10) as sock:
        sock.sendall(head)
        started = time.monotonic()
        answer = b""
        while time.monotonic() - started < 70:
            try:
                sock.send(b"a")
            except OSError:  # closed by the daemon
                break
            sock.settimeout(2)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            answer += chunk
            if not chunk or b"\r\n\r\n" in answer:
                break
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), (took, answer)
    assert took < 70
    assert b"Connection: close" in answer
    assert b"request body not complete within 60 s" in answer
    _hello_is_quick(fnd)
