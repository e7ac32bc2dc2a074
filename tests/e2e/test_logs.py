"""The JSON log stays JSON: what aiohttp and asyncio report becomes lines of the same format.

A request aiohttp cannot parse (no Host, a control character in a header, garbage) used to
write a multi-line traceback into the log, which stops a `jq` pipeline at the first one.
"""

from __future__ import annotations

import os
import signal
import socket
from urllib.parse import urlsplit

from tests.fndserver import running

MALFORMED = (
    b"GET /hello HTTP/1.1\r\n\r\n",  # no Host
    b"GET /hello HTTP/1.1\r\nHost: fnd\r\nX-A: a\x01b\r\n\r\n",  # a control character
    b"NOT HTTP AT ALL\r\n\r\n",
)


def _send(url: str, raw: bytes) -> bytes:
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(raw)
        return sock.recv(4096)


def test_malformed_requests_are_one_json_line_each() -> None:
    with running("ops") as fnd:
        for raw in MALFORMED:
            assert _send(fnd.url, raw).split(b" ")[1] == b"400"
        bad = fnd.wait_for(lambda line: line.get("event") == "bad request")
        fnd.wait_for(lambda line: sum(1 for x in fnd.lines
                                      if x.get("event") == "bad request") >= 2)
        assert fnd.get("/hello").status_code == 200
    assert bad["outcome"] == "bad_request" and bad["status"] == 400
    assert bad["client"] == "127.0.0.1" and "Host" in bad["reason"]
    raw_lines = [line["text"] for line in fnd.lines if line.get("event") == "raw"]
    assert raw_lines == [], "lines that are not JSON:\n" + "\n".join(raw_lines[:20])


def test_ctrl_c_stops_cleanly_without_tracebacks() -> None:
    # setsid: the daemon leads its own process group, as in a terminal, so that the SIGINT
    # a Ctrl-C sends reaches the daemon and the zygote together.
    with running("ops", wrap=lambda command: ["setsid", *command]) as fnd:
        assert fnd.get("/hello").status_code == 200
        os.killpg(fnd.process.pid, signal.SIGINT)
        assert fnd.process.wait(30) == 0
        fnd.wait_for(lambda line: line.get("event") == "stopped", timeout=10)
    text = "\n".join(str(line.get("text") or line) for line in fnd.lines)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text


def test_dev_console_logs_have_no_colours_when_redirected() -> None:
    # stderr is a pipe; console lines are not JSON, so "ready" is looked for in their text
    with running("ops", "--dev", "--log-format", "console", ready=False) as server:
        server.wait_for(lambda line: " ready " in str(line.get("text", ""))
                        and "listen=" in str(line.get("text", "")))
        assert server.stop() == 0
    text = "\n".join(str(line.get("text") or line) for line in server.lines)
    assert "\x1b[" not in text, text[:500]
