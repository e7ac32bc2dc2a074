"""The front-end (daemon/http/app.py) over real HTTP, with a fake pool under it: no processes.

aiohttp's test server runs the real ``FrontEnd.handle``; tests/daemon/fake_pool.py stands in
for the pool. Each request's one log line is read from the real Stats, through a logger that
keeps what it is given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import RawTestServer, TestClient
from twilio.request_validator import RequestValidator

from fnd.daemon import calls
from fnd.daemon.config import Config, load_config
from fnd.daemon.http.app import INVOCATION_HEADER, FrontEnd
from fnd.daemon.project import scan_project
from fnd.daemon.stats import Stats
from tests.daemon.fake_pool import WORKER_PID, FakePool
from tests.daemon.log_lines import LogLines

pytestmark = pytest.mark.unit

TOKEN = "12345"
HOST = "fn.example.com"


class Env:
    def __init__(self, front: FrontEnd, pool: FakePool, log: LogLines, client: TestClient) -> None:
        self.front, self.pool, self.log, self.client = front, pool, log, client

    def line(self) -> dict[str, Any]:
        """The one invocation line written so far."""
        assert len(self.log.lines) == 1, self.log.lines
        return self.log.lines[0]


def _project(root: Path, env: str = f"AUTH_TOKEN={TOKEN}\n") -> Path:
    root.mkdir(exist_ok=True)
    functions, assets = root / "functions", root / "assets"
    functions.mkdir()
    assets.mkdir()
    code = "def handler(context, event, callback):\n    callback(None, 'hi')\n"
    (functions / "hello.py").write_text(code)
    (functions / "sms.protected.py").write_text(code)
    (functions / "broken.py").write_text("def handler(:\n")
    (assets / "style.css").write_text("body {}\n")
    (assets / "index.html").write_text("<p>home</p>\n")
    (assets / "secret.protected.txt").write_text("hidden\n")
    (root / ".env").write_text(env)
    return root


def run(
    tmp_path: Path, scenario: Callable[[Env], Awaitable[None]], *,
    env: str = f"AUTH_TOKEN={TOKEN}\n", **settings: Any,
) -> None:
    config = dataclasses.replace(load_config(_project(tmp_path, env), environ={}), **settings)
    asyncio.run(_serve(config, scenario))


async def _serve(config: Config, scenario: Callable[[Env], Awaitable[None]]) -> None:
    log = LogLines()
    pool = FakePool()
    front = FrontEnd(config, scan_project(config.project_dir), pool, Stats(log=log))  # type: ignore[arg-type]
    async with TestClient(RawTestServer(front.handle)) as client:
        await scenario(Env(front, pool, log, client))


def _signature(url: str, params: dict[str, str] | None = None) -> str:
    return str(RequestValidator(TOKEN).compute_signature(url, params or {}))


# -- functions ---------------------------------------------------------------------------
def test_a_function_call_reaches_the_pool_and_its_line_is_written_once(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        response = await env.client.get("/hello?a=1&a=2", headers={"Host": HOST})
        assert response.status == 200
        answer = await response.json()
        assert answer["event"]["a"] == ["1", "2"]
        assert answer["context"]["DOMAIN_NAME"] == HOST
        assert answer["context"]["PATH"] == "/hello"
        line = env.line()
        assert line["invocation_id"] == response.headers[INVOCATION_HEADER]
        assert line["function"] == "/hello" and line["path"] == "/hello"
        assert line["worker_pid"] == WORKER_PID and line["status"] == 200
        assert line["outcome"] == calls.OK and line["cpu_ms"] == 2.0
        assert line["peak_rss"] == 1 << 20 and line["client"] == "127.0.0.1"

    run(tmp_path, scenario)


def test_a_form_body_and_a_json_body_become_the_event(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        response = await env.client.post("/hello", data={"Body": "hi"})
        assert (await response.json())["event"]["Body"] == "hi"
        response = await env.client.post("/hello", json={"n": 1})
        assert (await response.json())["event"]["n"] == 1

    run(tmp_path, scenario)


def test_the_pool_full_is_503_with_its_line(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        env.pool.full = True
        response = await env.client.get("/hello")
        assert response.status == 503 and response.headers["Retry-After"] == "1"
        assert await response.text() == "all workers are busy and the queue is full\n"
        line = env.line()
        assert line["outcome"] == calls.OVERLOAD and line["function"] == "/hello"
        assert line["worker_pid"] is None and line["level"] == "warning"
        assert line["invocation_id"] == response.headers[INVOCATION_HEADER]

    run(tmp_path, scenario)


def test_504_and_502_from_the_pool_pass_through(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        for status, outcome, reason in ((504, calls.TIMEOUT, "function timed out after 5 s"),
                                        (502, calls.CRASH, "function crashed: killed")):
            env.pool.answer = calls.text_outcome(status, outcome, reason)
            response = await env.client.get("/hello")
            assert response.status == status
            assert await response.text() == reason + "\n"
            line = env.log.lines.pop()
            assert (line["status"], line["outcome"], line["reason"]) == (status, outcome, reason)
            assert line["worker_pid"] == WORKER_PID

    run(tmp_path, scenario)


def test_framing_headers_of_a_function_are_dropped(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        env.pool.answer = calls.Outcome(
            200, [("Content-Length", "999"), ("Connection", "close"), ("X-A", "1")], b"ok",
            calls.OK)
        response = await env.client.get("/hello")
        assert response.headers["X-A"] == "1" and response.headers["Content-Length"] == "2"
        assert await response.read() == b"ok"

    run(tmp_path, scenario)


def test_a_function_that_cannot_load_is_500_with_the_id_in_production(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        response = await env.client.get("/broken")
        invocation_id = response.headers[INVOCATION_HEADER]
        assert response.status == 500
        assert await response.text() == (
            f"the function could not be loaded (invocation {invocation_id})\n")
        line = env.line()
        assert "broken.py" in line["reason"] and line["outcome"] == calls.ERROR
        assert env.pool.calls == []

    run(tmp_path, scenario)


def test_a_function_that_cannot_load_shows_why_in_dev(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        response = await env.client.get("/broken")
        assert response.status == 500 and "broken.py" in await response.text()

    run(tmp_path, scenario, dev=True)


# -- refusals before the pool ------------------------------------------------------------
def test_an_unknown_path_is_404_with_its_reason(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        response = await env.client.get("/nope")
        assert response.status == 404
        assert await response.text() == "no function or asset at /nope\n"
        line = env.line()
        assert line["function"] is None and line["outcome"] == calls.REJECTED
        assert line["worker_pid"] is None and line["level"] == "info"

    run(tmp_path, scenario)


def test_malformed_json_and_a_lone_surrogate_are_400(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        headers = {"Content-Type": "application/json"}
        response = await env.client.post("/hello", data=b"{nope", headers=headers)
        assert response.status == 400
        assert (await response.text()).startswith("malformed JSON body:")
        response = await env.client.post("/hello", data=b'{"a": "\\ud800"}', headers=headers)
        assert response.status == 400
        assert "lone surrogate (\\ud800)" in await response.text()
        assert env.pool.calls == []
        assert [line["function"] for line in env.log.lines] == ["/hello", "/hello"]
        assert {line["outcome"] for line in env.log.lines} == {calls.REJECTED}

    run(tmp_path, scenario)


def test_a_bad_host_is_400_even_for_an_unknown_path(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        for path in ("/hello", "/nope"):
            response = await env.client.get(path, headers={"Host": "a b"})
            assert response.status == 400
            assert await response.text() == "invalid Host header 'a b'\n"
        assert [line["function"] for line in env.log.lines] == [None, None]

    run(tmp_path, scenario)


def test_a_bad_forwarded_host_from_a_trusted_proxy_is_400(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        response = await env.client.get("/hello", headers={"X-Forwarded-Host": "x, a/b"})
        assert response.status == 400
        assert await response.text() == "invalid X-Forwarded-Host header 'a/b'\n"
        response = await env.client.get("/hello", headers={
            "X-Forwarded-Host": "x, proxied.example.com", "X-Forwarded-For": "1.2.3.4, 5.6.7.8",
            "X-Request-Id": "nginx-id-1"})
        assert response.headers[INVOCATION_HEADER] == "nginx-id-1"
        assert (await response.json())["context"]["DOMAIN_NAME"] == "proxied.example.com"
        line = env.log.lines[-1]
        assert line["client"] == "5.6.7.8" and line["invocation_id"] == "nginx-id-1"

    run(tmp_path, scenario, trusted_proxies=("127.0.0.1",))


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        response = await env.client.get("/hello", headers={
            "Host": HOST, "X-Forwarded-Host": "evil.example.com",
            "X-Forwarded-For": "1.2.3.4", "X-Request-Id": "forged"})
        assert response.headers[INVOCATION_HEADER] != "forged"
        assert (await response.json())["context"]["DOMAIN_NAME"] == HOST
        assert env.line()["client"] == "127.0.0.1"

    run(tmp_path, scenario)


def test_the_configured_domain_wins(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        response = await env.client.get("/hello", headers={"Host": HOST})
        assert (await response.json())["context"]["DOMAIN_NAME"] == "fixed.example.com"

    run(tmp_path, scenario, public_url="https://fixed.example.com")


def test_an_oversized_body_is_413_declared_or_streamed(tmp_path: Path) -> None:
    async def chunks() -> Any:
        for _ in range(4):
            yield b"x" * 60

    async def scenario(env: Env) -> None:
        response = await env.client.post("/hello", data=b"x" * 101)
        assert response.status == 413
        assert await response.text() == (
            "request body of 101 bytes is over the 100 byte limit\n")
        response = await env.client.post("/hello", data=chunks())  # chunked: no length
        assert response.status == 413
        assert await response.text() == "request body is over the 100 byte limit\n"
        assert env.pool.calls == []

    run(tmp_path, scenario, max_request_body=100)


def test_too_many_headers_is_431_and_an_odd_method_405(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        headers = {f"X-H{i}": "v" for i in range(12)}
        response = await env.client.get("/hello", headers=headers)
        assert response.status == 431
        assert (await response.text()).startswith("too many request header fields")
        response = await env.client.request("PROPFIND", "/hello")
        assert response.status == 405
        assert await response.text() == "method PROPFIND is not allowed\n"

    run(tmp_path, scenario, max_header_count=10)


def test_options_is_answered_by_the_cors_rule(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        response = await env.client.options("/sms")  # protected: no signature needed
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert env.pool.calls == []

    run(tmp_path, scenario)


# -- the signature gate ------------------------------------------------------------------
def test_a_protected_function_needs_a_valid_signature(tmp_path: Path) -> None:
    url = f"http://{HOST}/sms"

    async def scenario(env: Env) -> None:
        form = {"Body": "hi"}
        response = await env.client.post("/sms", data=form, headers={"Host": HOST})
        assert response.status == 401
        assert await response.text() == "X-Twilio-Signature header is missing\n"
        response = await env.client.post("/sms", data=form, headers={
            "Host": HOST, "X-Twilio-Signature": _signature(url, {"Body": "other"})})
        assert response.status == 401
        assert (await response.text()).startswith("X-Twilio-Signature is not valid")
        response = await env.client.post("/sms", data=form, headers={
            "Host": HOST, "X-Twilio-Signature": _signature(url, form)})
        assert response.status == 200
        assert (await response.json())["event"]["Body"] == "hi"
        assert len(env.pool.calls) == 1
        assert [line["status"] for line in env.log.lines] == [401, 401, 200]
        assert all(line["function"] == "/sms" for line in env.log.lines)

    run(tmp_path, scenario)


def test_malformed_json_to_a_protected_function_is_401_unsigned_and_400_signed(
    tmp_path: Path,
) -> None:
    body = b"{nope"

    async def scenario(env: Env) -> None:
        headers = {"Host": HOST, "Content-Type": "application/json"}
        response = await env.client.post("/sms", data=body, headers=headers)
        assert response.status == 401
        digest = hashlib.sha256(body).hexdigest()
        url = f"http://{HOST}/sms?bodySHA256={digest}"
        headers["X-Twilio-Signature"] = _signature(url)
        response = await env.client.post(f"/sms?bodySHA256={digest}", data=body,
                                         headers=headers)
        assert response.status == 400
        assert (await response.text()).startswith("malformed JSON body:")

    run(tmp_path, scenario)


def test_a_signed_get_and_no_token(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        url = f"http://{HOST}/sms?x=1"
        response = await env.client.get("/sms?x=1", headers={
            "Host": HOST, "X-Twilio-Signature": _signature(url)})
        assert response.status == 200

    run(tmp_path, scenario)

    async def no_token(env: Env) -> None:
        response = await env.client.get("/sms")
        assert response.status == 500
        assert await response.text() == (
            "protected function needs AUTH_TOKEN; set AUTH_TOKEN in .env\n")
        response = await env.client.get("/secret.txt")
        assert response.status == 500
        assert env.log.lines[0]["outcome"] == calls.ERROR

    run(tmp_path / "b", no_token, env="")


def test_no_signatures_in_dev_lets_protected_calls_in(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        assert (await env.client.get("/sms")).status == 200

    run(tmp_path, scenario, dev=True, no_signatures=True)


# -- assets ------------------------------------------------------------------------------
def test_assets_are_served_and_logged_once_sent(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        response = await env.client.get("/style.css")
        assert response.status == 200 and await response.text() == "body {}\n"
        assert response.headers[INVOCATION_HEADER]
        response = await env.client.get("/")
        assert await response.text() == "<p>home</p>\n"
        response = await env.client.head("/style.css")
        assert response.status == 200
        response = await env.client.get("/style.css",
                                        headers={"If-None-Match": response.headers["ETag"]})
        assert response.status == 304
        await asyncio.sleep(0)
        assert [line["status"] for line in env.log.lines] == [200, 200, 200, 304]
        assert {line["function"] for line in env.log.lines} == {None}
        assert env.pool.calls == []

    run(tmp_path, scenario)


def test_asset_refusals(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        response = await env.client.post("/style.css")
        assert response.status == 405 and response.headers["Allow"] == "GET, HEAD, OPTIONS"
        response = await env.client.get("/secret.txt")
        assert response.status == 403
        assert await response.text() == "X-Twilio-Signature header is missing\n"
        (env.front.project.root / "assets" / "style.css").unlink()
        response = await env.client.get("/style.css")
        assert response.status == 404
        assert [line["status"] for line in env.log.lines] == [405, 403, 404]

    run(tmp_path, scenario)


# -- the daemon's own state --------------------------------------------------------------
def test_draining_closes_each_connection_after_its_answer(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        response = await env.client.get("/hello")
        assert response.headers.get("Connection", "").lower() != "close"
        env.front.draining = True
        for path in ("/hello", "/nope", "/style.css"):
            response = await env.client.get(path)
            assert response.headers["Connection"].lower() == "close", path

    run(tmp_path, scenario)


def test_a_bug_in_the_front_end_is_a_500_with_one_line(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        async def broken(call: calls.Call) -> calls.Outcome:
            raise KeyError("unexpected")

        env.pool.invoke = broken  # type: ignore[method-assign]
        response = await env.client.get("/hello")
        assert response.status == 500
        assert await response.text() == "internal error: KeyError\n"
        assert env.line()["reason"] == "internal error: KeyError"

    run(tmp_path, scenario)


def test_a_reload_swaps_the_routes_and_keeps_bad_proxies_out(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        before = env.front._proxies
        root = env.front.project.root
        (root / "functions" / "new.py").write_text("def handler(c, e, cb):\n    cb()\n")
        config = dataclasses.replace(env.front.config, trusted_proxies=("not an address",))
        env.front.set_project(config, scan_project(root))
        assert (await env.client.get("/new")).status == 200
        assert env.front.config is config and env.front._proxies is before

    run(tmp_path, scenario)


def test_invocation_ids_are_unique(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        ids = {(await env.client.get("/nope")).headers[INVOCATION_HEADER] for _ in range(3)}
        assert len(ids) == 3

    run(tmp_path, scenario)



# -- HTTP edges and slow clients -----------------------------------------------------------
def test_connect_and_trace_are_405_wherever_they_go(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        for method, path in (("TRACE", "/hello"), ("TRACE", "/nope"), ("TRACE", "/style.css"),
                             ("CONNECT", "/hello")):
            response = await env.client.request(method, path)
            assert response.status == 405, (method, path)
            assert await response.text() == f"method {method} is not allowed\n"
            assert "OPTIONS" in response.headers["Allow"]
        assert env.pool.calls == []

    run(tmp_path, scenario)


def test_an_unknown_expectation_is_417_and_100_continue_is_honoured(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        response = await env.client.get("/hello", headers={"Expect": "999-bogus"})
        assert response.status == 417
        assert await response.text() == ("Expect '999-bogus' is not supported "
                                          "(only 100-continue is)\n")
        response = await env.client.post("/hello", data={"Body": "hi"}, expect100=True)
        assert response.status == 200
        assert (await response.json())["event"]["Body"] == "hi"
        assert len(env.pool.calls) == 1

    run(tmp_path, scenario)


def test_a_body_not_complete_within_body_timeout_is_408_and_closes(tmp_path: Path) -> None:
    async def trickle() -> Any:
        for _ in range(50):
            yield b"x"
            await asyncio.sleep(0.05)

    async def scenario(env: Env) -> None:
        response = await env.client.post("/hello", data=trickle())
        assert response.status == 408
        assert await response.text() == "request body not complete within 0.3 s\n"
        assert response.headers["Connection"].lower() == "close"
        assert env.line()["status"] == 408 and env.pool.calls == []

    run(tmp_path, scenario, body_timeout=0.3)


def test_a_large_answer_is_streamed_whole_within_the_budget(tmp_path: Path) -> None:
    big = b"y" * (3 * 65536 + 7)

    async def scenario(env: Env) -> None:
        env.pool.answer = calls.Outcome(200, [("Content-Type", "text/plain"),
                                              ("X-Mine", "1")], big, calls.OK)
        response = await env.client.get("/hello")
        assert response.status == 200 and response.headers["X-Mine"] == "1"
        assert response.headers["Content-Length"] == str(len(big))
        assert await response.read() == big
        response = await env.client.head("/hello")
        assert response.status == 200 and await response.read() == b""
        assert env.front.budget.held == 0
        env.front.budget.held = env.front.budget.limit - len(big) + 1  # others hold the rest
        response = await env.client.get("/hello")
        assert response.status == 503 and response.headers["Retry-After"] == "1"
        assert "X-Mine" not in response.headers and INVOCATION_HEADER in response.headers
        assert (await response.text()).startswith("the daemon already holds 4 MB of answers")

    run(tmp_path, scenario, max_buffered_mb=4)


# -- the drain ------------------------------------------------------------------------------
def test_the_drain_waits_for_a_request_parsed_two_loop_turns_before_its_handler(
        tmp_path: Path) -> None:
    """aiohttp runs handle() two turns after it parsed the request: the pool must not start
    refusing in between (a 503 in a restart that fails nothing)."""
    async def scenario(env: Env) -> None:
        front, loop = env.front, asyncio.get_running_loop()
        answered: list[str] = []

        def enter() -> None:  # what handle() does when it starts, then when it answers
            front.handling += 1
            loop.call_later(0.02, leave)

        def leave() -> None:
            front.handling -= 1
            answered.append("answered")

        loop.call_soon(loop.call_soon, enter)  # parsed now: the handler runs two turns on
        left = await front.handed_over(5.0)
        assert answered == ["answered"] and front.handling == 0
        assert 0.0 < left < 5.0

    run(tmp_path, scenario)


def test_the_drain_wait_ends_at_its_timeout_with_nothing_left(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        env.front.handling = 1  # a request that never answers
        assert await env.front.handed_over(0.05) == 0.0
        env.front.handling = 0

    run(tmp_path, scenario)
