"""What a hostile or sloppy client cannot do to the front-end of a real `fnd serve`.

Lone surrogates in JSON, a Host that is not a host name, body limits a worker frame cannot
carry, and clients that trickle their request heads (or idle) to hold connections open.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests.fndserver import FndServer, running

HEADER_TIMEOUT = 6  # long enough for the trickle test below, short enough for slowloris
KEEPALIVE_TIMEOUT = 1


@pytest.fixture(scope="module")
def fnd() -> Iterator[FndServer]:
    with running("contract", "--timeout", "3", "--workers-min", "2", "--workers-max", "2",
                 "--header-timeout", str(HEADER_TIMEOUT),
                 "--keepalive-timeout", str(KEEPALIVE_TIMEOUT)) as server:
        yield server


def _address(fnd: FndServer) -> tuple[str, int]:
    host, _, port = fnd.url.removeprefix("http://").rpartition(":")
    return host, int(port)


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response (Content-Length framed) read from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(head.split(b" ")[1]), body


def _raw(fnd: FndServer, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(_address(fnd), timeout=10) as sock:
        sock.sendall(request)
        return _read_response(sock)


def _served_quickly(fnd: FndServer) -> None:
    started = time.monotonic()
    response = fnd.get("/hello", timeout=10)
    assert response.status_code == 200 and response.text == "hello"
    assert time.monotonic() - started < 2  # generous: a stuck worker would take the timeout


# -- JSON bodies ---------------------------------------------------------------------------

def test_lone_surrogate_in_json_is_400_and_the_pool_stays_healthy(fnd: FndServer) -> None:
    for body in (b'{"x":"\\ud800"}', b'{"\\udfff":1}', b'{"a":[{"b":"\\ud800"}]}') * 3:
        response = fnd.request("POST", "/echo", data=body,
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.text.startswith("JSON body holds a lone surrogate (\\ud")
        assert response.text.endswith("which is not valid Unicode\n")
        assert response.text.count("\n") == 1
    _served_quickly(fnd)
    paired = fnd.request("POST", "/echo", data=b'{"x":"\\ud83d\\ude00"}',
                         headers={"Content-Type": "application/json"})
    assert paired.json()["event"]["x"] == "\U0001f600"


# -- Host ------------------------------------------------------------------------------------

def test_host_that_is_not_a_host_name_is_400(fnd: FndServer) -> None:
    for host, shown in ((b"\xff", b"'\\xff'"), (b"evil.example/path", b"'evil.example/path'"),
                        (b"a b", b"'a b'")):
        status, body = _raw(fnd, b"GET /echo HTTP/1.1\r\nHost: " + host +
                            b"\r\nConnection: close\r\n\r\n")
        assert (status, body) == (400, b"invalid Host header " + shown + b"\n"), host
        _served_quickly(fnd)
    line = fnd.wait_for(lambda entry: entry.get("reason") == "invalid Host header '\\xff'")
    assert line["status"] == 400


def test_header_bytes_that_are_not_utf8_reach_the_function_as_text(fnd: FndServer) -> None:
    status, body = _raw(fnd, b"GET /echo HTTP/1.1\r\nHost: a.example\r\nX-Raw: caf\xe9\r\n"
                             b"Cookie: n=\xff\r\nConnection: close\r\n\r\n")
    assert status == 200
    request = json.loads(body)["event"]["request"]
    assert request["headers"]["x-raw"] == "caf\ufffd"
    assert request["cookies"] == {"n": "\ufffd"}


def test_domain_name_is_the_valid_host_the_client_used(fnd: FndServer) -> None:
    headers = {"Host": "other.example:8080", "X-Forwarded-Host": "not-trusted.example"}
    assert fnd.get("/echo", headers=headers).json()["domain"] == "other.example:8080"
    assert fnd.get("/echo", headers={"Host": "[::1]:3000"}).json()["domain"] == "[::1]:3000"


def test_public_url_host_wins_over_the_clients() -> None:
    with running("contract", env={"FND_PUBLIC_URL": "https://fn.example.com/base"}) as fnd:
        response = fnd.get("/echo", headers={"Host": "attacker.example"})
        assert response.json()["domain"] == "fn.example.com"
    with running("contract", env={"FND_PUBLIC_URL": "https://fn.example.com"},
                 files={".env": "DOMAIN_NAME=from.env.example\n"}) as fnd:
        response = fnd.get("/echo", headers={"Host": "attacker.example"})
        assert response.json()["domain"] == "from.env.example"  # .env wins over all


# -- limits checked at start-up --------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--max-request-body", "--max-response-body"])
def test_body_limit_a_frame_cannot_carry_refuses_to_start(flag: str) -> None:
    with running("contract", flag, "100000000", ready=False) as server:
        line = server.wait_for(lambda entry: entry.get("event") == "cannot start")
        setting = flag.removeprefix("--").replace("-", "_")
        assert line["reason"].startswith(f"{setting} = 100000000 is too large")
        assert "\n" not in line["reason"]
        assert server.process.wait(30) == 1


# -- slow and idle clients -------------------------------------------------------------------

def test_slow_request_heads_are_cut_while_normal_clients_are_served(fnd: FndServer) -> None:
    head = b"GET /hello HTTP/1.1\r\nHost: slow.example\r\nX-Pad: " + b"x" * 40
    slow = [socket.create_connection(_address(fnd), timeout=10) for _ in range(200)]
    silent = socket.create_connection(_address(fnd), timeout=HEADER_TIMEOUT + 12)
    open_ = {sock.fileno(): sock for sock in slow}
    answers: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def normal_client() -> None:
        try:
            for _ in range(20):
                _served_quickly(fnd)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    client = threading.Thread(target=normal_client)
    client.start()
    deadline = time.monotonic() + HEADER_TIMEOUT + 12
    sent = 0
    try:
        while open_ and time.monotonic() < deadline:
            for fd, sock in list(open_.items()):  # one more byte each, a second apart
                try:
                    sock.send(head[sent:sent + 1])
                except OSError:
                    answers[fd] = b""
                    del open_[fd]
            sent = min(sent + 1, len(head) - 1)  # never complete the head
            readable, _, _ = select.select(list(open_.values()), [], [], 1.0)
            for sock in readable:
                try:
                    answers[sock.fileno()] = sock.recv(4096)
                except OSError:
                    answers[sock.fileno()] = b""
                del open_[sock.fileno()]
        client.join(30)
        assert not errors, errors
        assert not open_, f"{len(open_)} slow connections still open"
        for answer in answers.values():
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
        assert any(answer.endswith(b"request head not complete within 6 s\n")
                   for answer in answers.values())
        assert silent.recv(4096) == b""  # never sent a byte: closed without an answer
    finally:
        for sock in [*slow, silent]:
            sock.close()
    fnd.wait_for(lambda entry: entry.get("event") == "request head timeout")


def test_idle_keepalive_connection_is_closed(fnd: FndServer) -> None:
    with socket.create_connection(_address(fnd), timeout=10) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: a.example\r\n\r\n")
        assert _read_response(sock) == (200, b"hello")
        assert sock.recv(4096) == b""  # closed by the server, well before the 10 s timeout


def test_a_head_may_take_longer_than_keepalive_once_it_has_begun() -> None:
    request = b"GET /hello HTTP/1.1\r\nHost: a.example\r\n\r\n"
    with running("contract", "--keepalive-timeout", "2", "--header-timeout", "30") as fnd, \
            socket.create_connection(_address(fnd), timeout=10) as sock:
        sock.sendall(request)
        assert _read_response(sock) == (200, b"hello")
        # The next head starts at once, then trickles in over 4 s (> keepalive_timeout).
        for start in range(0, len(request), 4):
            sock.sendall(request[start:start + 4])
            time.sleep(4 / (len(request) / 4))
        assert _read_response(sock) == (200, b"hello")


def test_requests_on_a_kept_alive_connection(fnd: FndServer) -> None:
    with requests.Session() as session:
        for _ in range(5):
            assert session.get(fnd.url + "/hello", timeout=10).text == "hello"


# -- HTTP edges ------------------------------------------------------------------------------

def _whole_answer(fnd: FndServer, request: bytes) -> bytes:
    """Everything the daemon sends on a fresh connection until it closes it (or 10 s)."""
    with socket.create_connection(_address(fnd), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_an_http_0_9_request_is_400_and_closed(fnd: FndServer) -> None:
    answer = _whole_answer(fnd, b"GET /hello\r\n\r\n")
    assert answer.startswith(b"HTTP/1."), answer
    assert answer.split(b"\r\n")[0].split(b" ")[1] == b"400", answer
    assert b"hello" not in answer.partition(b"\r\n\r\n")[2]
    _served_quickly(fnd)


def test_an_unknown_expectation_is_417(fnd: FndServer) -> None:
    status, body = _raw(fnd, b"GET /hello HTTP/1.1\r\nHost: a.example\r\nExpect: 999-bogus\r\n"
                             b"Connection: close\r\n\r\n")
    assert (status, body) == (417, b"Expect '999-bogus' is not supported "
                                   b"(only 100-continue is)\n")
    _served_quickly(fnd)


def test_expect_100_continue_gets_its_interim_answer_then_the_call(fnd: FndServer) -> None:
    body = b"a=1&b=2"
    with socket.create_connection(_address(fnd), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(1)
            assert chunk, interim
            interim += chunk
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, answer = _read_response(sock)
    assert status == 200
    event = json.loads(answer)["event"]
    assert (event["a"], event["b"]) == ("1", "2")


@pytest.mark.parametrize("request_line", [b"CONNECT a.example:443 HTTP/1.1",
                                          b"TRACE /hello HTTP/1.1", b"TRACE /nowhere HTTP/1.1",
                                          b"TRACE /style.css HTTP/1.1"])
def test_connect_and_trace_are_405(fnd: FndServer, request_line: bytes) -> None:
    answer = _whole_answer(fnd, request_line + b"\r\nHost: a.example:443\r\n"
                                               b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n"), answer
    method = request_line.split(b" ")[0]
    assert answer.endswith(b"method " + method + b" is not allowed\n"), answer
    _served_quickly(fnd)
