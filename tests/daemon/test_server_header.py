"""``server_header``: the one Server line of every answer of the front-end's server
(daemon/http/timeouts.py), whoever writes the answer: the handler, aiohttp itself (a bad
request), or the connection cap's raw 503. Loopback only."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from aiohttp import web

from fnd.daemon.config import ConfigError, load_config
from fnd.daemon.http.timeouts import TimeoutServer

pytestmark = pytest.mark.unit


async def _handler(request: web.BaseRequest) -> web.StreamResponse:
    if request.path == "/own":  # a function that sets its own: the configured value wins
        return web.Response(text="hi", headers={"Server": "mine/1.0"})
    return web.Response(status=404 if request.path == "/none" else 200, text="hi")


async def _exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    return head


def _server_lines(head: bytes) -> list[bytes]:
    return [line for line in head.split(b"\r\n") if line.lower().startswith(b"server:")]


async def _answers(server_header: str) -> dict[str, bytes]:
    server = TimeoutServer(_handler, header_timeout=5, max_connections=1,
                           server_header=server_header, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    await web.SockSite(runner, sock).start()
    port = sock.getsockname()[1]
    try:
        heads = {
            "200": await _exchange(port, b"GET /x HTTP/1.1\r\nHost: a\r\n"
                                         b"Connection: close\r\n\r\n"),
            "404": await _exchange(port, b"GET /none HTTP/1.1\r\nHost: a\r\n"
                                         b"Connection: close\r\n\r\n"),
            "own": await _exchange(port, b"GET /own HTTP/1.1\r\nHost: a\r\n"
                                         b"Connection: close\r\n\r\n"),
            "aiohttp 400": await _exchange(port, b"NOT HTTP AT ALL\r\n\r\n"),
        }
        # One connection open (max_connections = 1): the next one gets the raw 503.
        _, holder = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(500):  # until the server has counted it (polling an observable)
            if server.connections:
                break
            await asyncio.sleep(0.01)
        heads["busy 503"] = await _exchange(port, b"")
        holder.close()
        return heads
    finally:
        await runner.cleanup()


def test_every_answer_says_fnd() -> None:
    heads = asyncio.run(_answers("fnd"))
    assert heads["busy 503"].startswith(b"HTTP/1.1 503")
    assert b" 400 Bad Request" in heads["aiohttp 400"].split(b"\r\n")[0]
    for what, head in heads.items():
        assert _server_lines(head) == [b"Server: fnd"], (what, head)


def test_an_empty_value_sends_no_server_line() -> None:
    for what, head in asyncio.run(_answers("")).items():
        assert _server_lines(head) == [], (what, head)


def test_the_default_is_fnd_and_a_line_break_is_refused() -> None:
    project = Path(__file__).parents[1] / "e2e" / "fixtures" / "ops"
    assert load_config(project).server_header == "fnd"
    assert load_config(project, {"server_header": ""}).server_header == ""
    with pytest.raises(ConfigError, match="server_header must be printable ASCII"):
        load_config(project, {"server_header": "fnd\r\nX-Evil: 1"})
