"""A small Twilio-compatible REST API on loopback that records every request it gets.

Functions reach it through ``twilio_api_base_url`` (the worker's REST client keeps the path
and sends the original host in ``X-Twilio-Host``). It answers the two calls the tests make
the way api.twilio.com and sync.twilio.com do: creating a Message and fetching a Sync
Service; anything else is Twilio's JSON 404.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

_MESSAGES = re.compile(r"/2010-04-01/Accounts/(?P<account>AC[0-9a-f]{32})/Messages\.json")
_SERVICE = re.compile(r"/v1/Services/(?P<name>[^/]+)")


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lowercased names
    body: bytes

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode())


class TwilioFake:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.url = ""
        self._lock = threading.Lock()

    def record(self, request: Recorded) -> None:
        with self._lock:
            self.requests.append(request)

    def answer(self, request: Recorded) -> tuple[int, dict[str, Any]]:
        if request.method == "POST" and (match := _MESSAGES.fullmatch(request.path)):
            form = {key: values[0] for key, values in request.form.items()}
            return 201, {
                "sid": "SM" + "a" * 32, "account_sid": match["account"], "status": "queued",
                "to": form.get("To"), "from": form.get("From"), "body": form.get("Body"),
                "direction": "outbound-api", "num_segments": "1",
            }
        if request.method == "GET" and (match := _SERVICE.fullmatch(request.path)):
            return 200, {"sid": "IS" + "b" * 32, "unique_name": match["name"],
                         "friendly_name": match["name"]}
        return 404, {"code": 20404, "message": "The requested resource was not found",
                     "status": 404}


@contextmanager
def twilio_fake() -> Iterator[TwilioFake]:
    fake = TwilioFake()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Recorded(
                method=self.command,
                path=self.path.split("?", 1)[0],
                headers={name.lower(): value for name, value in self.headers.items()},
                body=self.rfile.read(length),
            )
            fake.record(request)
            status, payload = fake.answer(request)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve  # noqa: N815 - http.server's naming

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
