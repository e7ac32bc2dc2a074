"""Property tests against one real `fnd serve`: hostile clients and hostile workers.

(a) Arbitrary bytes in the query, the form or JSON body, header values and Host, written on a
raw socket so that invalid bytes really reach the daemon. The function only reports sizes, so
any 5xx is the daemon's own failure; every request ends in a response or a clean close.

(b) Arbitrary bytes and arbitrary msgpack frames written by a function onto its worker's
result pipe. The client always gets 200, 500, 502 or 504 on an intact connection; a worker
that wrote an invalid frame is gone soon after; no worker stays busy past its limit.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_from_bytes, urlsplit

import msgpack
import pytest
import requests
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.e2e.hostile import (
    FIXTURE,
    SLACK,
    TIMEOUT,
    alive,
    attacker_pid,
    gone,
    new_tag,
    no_busy_worker,
    ok,
    worker_pid,
)
from tests.fndserver import FndServer, running, until

pytestmark = pytest.mark.slow

SOCKET_TIMEOUT = 10.0  # a request not answered (or closed) by then is a hang
# No shrinking: a failing example against a live daemon costs seconds (it waits out deadlines),
# and the first one found is reported as it is, so every test stays well within a minute.
FUZZ = settings(deadline=None, database=None, report_multiple_bugs=False,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture
def http_fnd() -> Iterator[FndServer]:
    """One daemon for all examples of the one client-side test (stopped right after it)."""
    with running(FIXTURE) as server:
        yield server


@pytest.fixture(scope="module")
def frames_fnd() -> Iterator[FndServer]:
    """Its own daemon: a client-side failure must not show up as a worker-side one."""
    with running(FIXTURE) as server:
        yield server


def _daemon_is_fine(fnd: FndServer) -> None:
    assert fnd.process.poll() is None, "the daemon died"
    until(lambda: no_busy_worker(fnd), TIMEOUT + SLACK, "no worker left busy")
    ok(fnd)


# -- (a) hostile clients ---------------------------------------------------------------------
_TOKENS = st.sampled_from([b"X-Fuzz", b"User-Agent", b"Accept", b"Cookie", b"X-Twilio-Signature",
                           b"Referer", b"X-Forwarded-For", b"Content-Language"])
_CONTENT_TYPES = st.sampled_from([b"application/x-www-form-urlencoded", b"application/json",
                                  b"application/vnd.api+json; charset=utf-16", b"text/plain",
                                  b"multipart/form-data", b""])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_BODIES = st.one_of(
    st.binary(max_size=300),
    st.dictionaries(st.text(), _JSON, max_size=5).map(lambda v: json.dumps(v).encode()),
    st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=6).map(
        lambda pairs: b"&".join(k + b"=" + v for k, v in pairs)),
)


# Bytes aiohttp's parser lets through: a header value may hold TAB, visible ASCII and any
# byte >= 0x80 (obs-text); in a query any byte arrives percent-encoded.
_VALUE_BYTES = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])


def _value(max_size: int) -> st.SearchStrategy[bytes]:
    """A header value: anything at all (the parser's refusal must be a 4xx, never a 5xx), or
    bytes the parser accepts, so that they reach the event, the context and the function."""
    return st.one_of(
        st.binary(max_size=max_size),
        st.lists(st.sampled_from(_VALUE_BYTES), max_size=max_size).map(bytes),
        st.text(max_size=max_size // 2).map(lambda t: t.encode("utf-8", "surrogatepass")
                                            .replace(b"\r", b"").replace(b"\n", b"")),
    )


def _query(max_size: int) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=max_size),
        st.binary(max_size=max_size).map(lambda b: quote_from_bytes(b, safe="=&").encode()),
        st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=24)), max_size=6).map(
            lambda pairs: b"&".join(quote_from_bytes(k).encode() + b"=" +
                                    quote_from_bytes(v).encode() for k, v in pairs)),
    )


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT"]))
    query = draw(_query(200))
    # Mostly a valid host (an invalid one is a 400 at once, before the rest is looked at).
    host = draw(st.one_of(
        st.sampled_from([b"localhost", b"fnd.example.com:8080", b"127.0.0.1", b"[::1]:3000"]),
        st.from_regex(rb"[a-z0-9]{1,12}(\.[a-z]{2,5})?(:[0-9]{1,5})?", fullmatch=True),
        _value(80),
    ))
    headers = draw(st.lists(st.tuples(_TOKENS, _value(120)), max_size=6))
    content_type = draw(_CONTENT_TYPES)
    body = draw(_BODIES)
    lines = [method + b" /sizes?" + query + b" HTTP/1.1", b"Host: " + host]
    lines += [name + b": " + value for name, value in headers]
    if content_type:
        lines.append(b"Content-Type: " + content_type)
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _exchange(fnd: FndServer, request: bytes) -> bytes:
    """Send `request` as is; everything the daemon answers until it closes (b"" if nothing)."""
    address = urlsplit(fnd.url)
    with socket.create_connection((address.hostname, address.port), SOCKET_TIMEOUT) as sock:
        sock.settimeout(SOCKET_TIMEOUT)
        # The daemon may refuse early and close: its answer (if any) is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # closed with our bytes unread: a close, not a hang
        except TimeoutError:
            raise AssertionError(f"no answer or close within {SOCKET_TIMEOUT} s for "
                                 f"{request[:300]!r}") from None
        return bytes(received)


def test_hostile_requests_never_get_a_5xx_or_a_hang(http_fnd: FndServer) -> None:
    fnd = http_fnd
    seen: dict[int, int] = {}

    @settings(FUZZ, max_examples=150)
    @given(request=raw_requests())
    # Bytes that are not UTF-8 in Host reach the context (DOMAIN_NAME), not just the event.
    @example(request=b"GET /sizes HTTP/1.1\r\nHost: 1\xc7\xf2\xd7\r\nConnection: close\r\n\r\n")
    @example(request=b"GET /sizes?a=%ff%fe&\xff=\xfe HTTP/1.1\r\nHost: x\r\n"
                     b"X-Fuzz: \x80\xff\r\nConnection: close\r\n\r\n")
    def one(request: bytes) -> None:
        answer = _exchange(fnd, request)
        if not answer:
            return  # a clean close without an answer
        assert answer.startswith(b"HTTP/1."), answer[:200]
        status = int(answer.split(b" ", 2)[1])
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, f"{status} for {request[:300]!r}:\n{answer[:500]!r}"

    one()
    # Enough examples must get past the parser and reach the function to test anything.
    assert seen.get(200, 0) * 10 >= sum(seen.values()), f"too few reached the function: {seen}"
    _daemon_is_fine(fnd)


# -- (b) hostile workers ---------------------------------------------------------------------
KNOWN = ("result", "done", "log")
_INT = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
_ANY = st.one_of(st.none(), st.booleans(), _INT, st.floats(), st.text(max_size=20),
                 st.binary(max_size=20), st.lists(_INT, max_size=3))
_IDS = st.one_of(st.just("$ID"), st.none(), st.text(max_size=12), _INT)
_HEADERS = st.one_of(
    st.lists(st.lists(st.text(max_size=12), min_size=2, max_size=2), max_size=4),
    st.lists(st.lists(_ANY, max_size=3), max_size=3),
    _ANY,
)


def _message(kind: str, fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A map of type `kind` whose fields are drawn from `fields`, some of them left out."""
    return st.fixed_dictionaries({"t": st.just(kind)}, optional=fields)


_TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1,
                 max_size=12)
_GOOD_HEADERS = st.lists(st.lists(_TOKEN, min_size=2, max_size=2), max_size=3)
# A RESULT for this invocation that is well-formed, or one field away from it (the values
# the daemon must refuse). Even the well-formed one is a violation here: raw_frames.py
# answers normally afterwards, and that second RESULT must not be ignored.
_NEAR_VALID_RESULT = st.fixed_dictionaries({
    "t": st.just("result"), "id": st.just("$ID"), "clean": st.just(True), "error": st.none(),
    "status": st.integers(200, 599) | st.sampled_from(
        [0, -1, 100, 101, 199, 600, 1000, True, False, 200.0, "200", float("inf"),
         float("nan"), None]),
    "headers": _GOOD_HEADERS | st.sampled_from(
        [[["X-A", "a\x01"]], [["X-A", "a\x7f"]], [["X A", "v"]], [["X-A", b"v"]],
         [["", "v"]], [["X-A"]], [["X-A", "v", "w"]], {"X-A": "v"}, [["X-A", "a\nb"]],
         [["X-A", 1]]]),
    "body": st.binary(max_size=64) | st.sampled_from(["text", None, 1]),
})

_MESSAGES = st.one_of(
    _NEAR_VALID_RESULT,
    _message("result", {
        "id": _IDS, "clean": _ANY | st.booleans(), "error": st.none() | st.text(max_size=20),
        "status": st.one_of(st.integers(100, 700), st.floats(), st.text(max_size=4),
                            st.booleans()),
        "headers": _HEADERS, "body": st.binary(max_size=64) | _ANY,
    }),
    _message("done", {
        "id": _IDS, "clean": st.booleans() | _ANY, "reason": st.none() | st.text(max_size=20),
        "cpu": st.floats() | _INT | _ANY, "rss": _INT | st.floats() | _ANY,
    }),
    _message("log", {
        "id": _IDS, "stream": st.sampled_from(["stdout", "stderr", "logging"]) | _ANY,
        "level": st.sampled_from(["INFO", "ERROR"]) | _ANY, "line": st.text(max_size=40) | _ANY,
    }),
    _message("ready", {"pid": _ANY, "layers": _ANY}),
    _message("failed", {"reason": _ANY}),
    st.text(max_size=10).filter(lambda t: t not in KNOWN).flatmap(
        lambda t: _message(t, {"id": _IDS})),
)


def _result(**fields: Any) -> dict[str, Any]:
    message = {"t": "result", "id": "$ID", "status": 200, "headers": [], "body": b"x",
               "clean": True, "error": None}
    return message | fields


def _invalid(messages: list[dict[str, Any]]) -> bool:
    """True when the frames break the protocol for sure: the function answers normally
    after them, so any RESULT or DONE makes a second RESULT or a RESULT after DONE, and a
    READY, FAILED or unknown type has no place in an invocation."""
    return any(message["t"] != "log" for message in messages)


def _frames_call(fnd: FndServer, payload: dict[str, str], invalid: bool,
                 chosen: frozenset[Any] = frozenset()) -> None:
    """One call whose function writes `payload` on its result pipe. `chosen`: statuses of
    the RESULT frames in it (a valid one may answer the call first, with its own status)."""
    tag = new_tag("frames")
    try:
        response = requests.post(f"{fnd.url}/raw_frames", params={"tag": tag}, json=payload,
                                 timeout=TIMEOUT + 3 * SLACK)
    except requests.RequestException as exc:
        raise AssertionError(f"no HTTP answer for {payload}: {exc!r}") from None
    allowed = {200, 500, 502, 504} | chosen
    assert response.status_code in allowed, (response.status_code, response.text)
    pid = worker_pid(fnd, response, tag)
    if invalid:
        gone(pid, 5 + SLACK, f"worker {pid} that wrote invalid frames {payload} gone")
    busy = [w for w in fnd.status()["per_worker"]
            if w["state"] == "busy" and (w["busy_for"] or 0) > TIMEOUT + SLACK]
    assert not busy, f"busy past the time limit: {busy}"


def test_random_bytes_on_the_result_pipe(frames_fnd: FndServer) -> None:
    fnd = frames_fnd
    @settings(FUZZ, max_examples=150)
    @given(data=st.binary(min_size=1, max_size=64))
    def one(data: bytes) -> None:
        _frames_call(fnd, {"raw": base64.b64encode(data).decode()}, invalid=True)

    one()
    _daemon_is_fine(fnd)


def test_random_frames_on_the_result_pipe(frames_fnd: FndServer) -> None:
    fnd = frames_fnd
    @settings(FUZZ, max_examples=150)
    @given(messages=st.lists(_MESSAGES, min_size=1, max_size=3))
    @example(messages=[_result()])  # answered twice: the second RESULT must not be ignored
    @example(messages=[_result(status="200")])
    @example(messages=[_result(headers=[["X-A", "a\x01"]])])
    @example(messages=[{"t": "log", "id": "$ID", "stream": "stdout", "level": "INFO",
                        "line": "fine"}, _result(status=True)])
    def one(messages: list[dict[str, Any]]) -> None:
        packed = msgpack.packb(messages, use_bin_type=True)
        chosen = frozenset(m.get("status") for m in messages if m["t"] == "result")
        _frames_call(fnd, {"messages": base64.b64encode(packed).decode()}, _invalid(messages),
                     chosen)

    one()
    _daemon_is_fine(fnd)


def test_a_worker_alive_after_valid_log_frames_still_serves(frames_fnd: FndServer) -> None:
    """The control case: well-formed LOG frames for the current call are not a violation."""
    fnd = frames_fnd
    tag = new_tag("frames")
    messages = [{"t": "log", "id": "$ID", "stream": "stdout", "level": "INFO", "line": "fine"}]
    packed = base64.b64encode(msgpack.packb(messages, use_bin_type=True)).decode()
    response = requests.post(f"{fnd.url}/raw_frames", params={"tag": tag},
                             json={"messages": packed}, timeout=30)
    assert response.status_code == 200 and response.json() == {"wrote": True}
    assert alive(attacker_pid(fnd, tag))
