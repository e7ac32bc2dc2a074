"""A loopback HTTP server that records the paths it is hit on: how fixtures prove side effects."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HitRecorder:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.changed = threading.Condition()
        self.url = ""

    def wait_for(self, path: str, timeout: float = 10.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: path in self.paths, timeout)


@contextmanager
def hit_server() -> Iterator[HitRecorder]:
    recorder = HitRecorder()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            with recorder.changed:
                recorder.paths.append(self.path)
                recorder.changed.notify_all()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
