"""Context, getTwilioClient, Runtime; globals and both spellings (docs/handlers.md#context,
docs/handlers.md#runtime)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fnd.worker.api import Context, Response, RuntimeAPI
from tests.worker.harness import ACCOUNT_SID, AUTH_TOKEN, FIXTURES, Worker, base_context


def test_context_access(worker: Worker) -> None:
    outcome = worker.call("context_access")
    assert json.loads(outcome.body) == {
        "attr": "hello",
        "item": "hello",
        "get": "default",
        "domain": "example.test",
        "service": None,
        "missing": "context has no 'NOT_SET'; set it in .env or [env] in fnd.toml",
    }


def test_get_twilio_client_returns_a_real_client(worker: Worker) -> None:
    outcome = worker.call("context_client")
    assert json.loads(outcome.body) == {
        "camel": True,
        "snake": True,
        "username": ACCOUNT_SID,
        "account_sid": ACCOUNT_SID,
        "region": "ie1",
    }


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        (
            {"ACCOUNT_SID": None},
            "CredentialsError: ACCOUNT_SID is not set: set ACCOUNT_SID "
            "(AC followed by 32 hex digits) in .env (or [env] in fnd.toml)",
        ),
        (
            {"ACCOUNT_SID": "AC123"},
            "CredentialsError: ACCOUNT_SID 'AC123' is malformed: expected AC followed by "
            "32 hex digits; fix ACCOUNT_SID in .env (or [env] in fnd.toml)",
        ),
        (
            {"AUTH_TOKEN": None},
            "CredentialsError: AUTH_TOKEN is not set: set AUTH_TOKEN (32 characters, from "
            "the Twilio console) in .env (or [env] in fnd.toml)",
        ),
        (
            {"AUTH_TOKEN": "s3cr3t"},
            "CredentialsError: AUTH_TOKEN is malformed: expected 32 characters, found 6; "
            "fix AUTH_TOKEN in .env (or [env] in fnd.toml)",
        ),
    ],
)
def test_credential_errors_say_which_and_how_to_fix(
    worker: Worker, credentials: dict[str, Any], message: str
) -> None:
    outcome = worker.call("context_client_error", context=base_context(**credentials))
    assert outcome.status == 500
    assert outcome.text.startswith("the function failed: CredentialsError (invocation ")
    assert outcome.result["error"] == f"handler raised {message}"
    assert "s3cr3t" not in outcome.result["error"]


def test_runtime_functions_load_and_assets(worker: Worker) -> None:
    info = json.loads(worker.call("runtime_info").body)
    assert info == {
        "same_functions": True,
        "helper_path": str(FIXTURES / "shared_helper.py"),
        "helper_value": "HI!",
        "helper_loads": 1,
        "same_module": True,
        "asset_paths": ["/blob.bin", "/notes.txt"],
        "notes_path": str(FIXTURES / "assets" / "notes.txt"),
        "notes_text": "secret text\n",
        "blob_bytes": list(b"\x00\x01\x02binary"),
        "blob_read_bytes": list(b"\x00\x01\x02binary"),
    }


def test_runtime_load_shares_the_cache_with_invocations(worker: Worker) -> None:
    worker.call("runtime_info")
    assert worker.call("shared_helper").body == b"helper"
    # The helper's bootstrap ran once for both uses: a second runtime_info still sees 1.
    assert json.loads(worker.call("runtime_info").body)["helper_loads"] == 1


def test_globals_are_injected_and_importable(worker: Worker) -> None:
    assert json.loads(worker.call("globals_present").body) == {
        "twilio": True,
        "runtime": True,
        "voice": "twilio.twiml.voice_response",
    }


class _FakeTwilio(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append({"path": self.path, "headers": dict(self.headers)})
        sid = "IS" + "0" * 32
        body = json.dumps({"sid": sid, "unique_name": self.path.rsplit("/", 1)[-1]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_twilio() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (_FakeTwilio,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", seen
    server.shutdown()
    server.server_close()


def test_get_sync_through_the_redirected_api_base_url(
    make_worker: Any, fake_twilio: tuple[str, list[dict[str, Any]]]
) -> None:
    base_url, seen = fake_twilio
    outcome = make_worker(twilio_api_base_url=base_url).call("sync_fetch")
    assert outcome.status == 200, outcome.text
    assert json.loads(outcome.body) == {"camel": "IS" + "0" * 32, "snake": "IS" + "0" * 32}
    assert [request["path"] for request in seen] == ["/v1/Services/chat", "/v1/Services/default"]
    headers = seen[0]["headers"]
    assert headers["X-Twilio-Host"] == "sync.twilio.com"
    assert headers["Authorization"].startswith("Basic ")
    user, _, token = base64.b64decode(headers["Authorization"][6:]).decode().partition(":")
    assert (user, token) == (ACCOUNT_SID, AUTH_TOKEN)


@pytest.mark.parametrize(
    ("cls", "pairs"),
    [
        (
            Response,
            [
                ("setStatusCode", "set_status_code"),
                ("setBody", "set_body"),
                ("appendHeader", "append_header"),
                ("setHeaders", "set_headers"),
                ("setCookie", "set_cookie"),
                ("removeCookie", "remove_cookie"),
            ],
        ),
        (Context, [("getTwilioClient", "get_twilio_client")]),
        (
            RuntimeAPI,
            [
                ("getFunctions", "get_functions"),
                ("getAssets", "get_assets"),
                ("getSync", "get_sync"),
            ],
        ),
    ],
)
def test_camel_and_snake_case_both_exist(cls: type, pairs: list[tuple[str, str]]) -> None:
    for camel, snake in pairs:
        assert callable(getattr(cls, camel)) and callable(getattr(cls, snake))
