"""docs/handlers.md over real HTTP against a real `fnd serve` (one daemon for the whole module)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator

import aiohttp
import psutil
import pytest

from tests.fndserver import FndServer, running
from tests.hits import hit_server


@pytest.fixture(scope="module")
def fnd() -> Iterator[FndServer]:
    with running("contract", "--timeout", "3", "--workers-min", "2", "--workers-max", "4") as s:
        yield s


def test_every_response_carries_an_invocation_id(fnd: FndServer) -> None:
    for path in ("/hello", "/nope", "/style.css", "/boom"):
        response = fnd.get(path)
        assert response.headers["X-Fnd-Invocation-Id"], path
    ids = {fnd.get("/hello").headers["X-Fnd-Invocation-Id"] for _ in range(5)}
    assert len(ids) == 5


def test_plain_text_response(fnd: FndServer) -> None:
    response = fnd.get("/hello")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.text == "hello"


def test_twiml_response(fnd: FndServer) -> None:
    response = fnd.get("/twiml")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
    assert response.text == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Say>Hi</Say></Response>'
    )


def test_custom_response_with_repeated_header(fnd: FndServer) -> None:
    response = fnd.get("/response")
    assert response.status_code == 418
    assert response.headers["Content-Type"] == "application/json"
    assert response.raw.headers.getlist("X-One") == ["1", "2"]
    assert response.json() == {"teapot": True}


def test_return_style_async_handler(fnd: FndServer) -> None:
    response = fnd.get("/returned")
    assert response.status_code == 200
    assert response.json() == {"style": "return", "async": True}


def test_nested_path_and_context_path(fnd: FndServer) -> None:
    assert fnd.get("/nested/deep?x=1").text == "deep /nested/deep"


def test_unknown_private_and_case_mismatch_are_404(fnd: FndServer) -> None:
    for path in ("/nope", "/secret", "/secret.private", "/Hello", "/hello/", "/data.txt",
                 "/data.private.txt"):
        response = fnd.get(path)
        assert response.status_code == 404, path
        assert path in response.text


def test_event_merges_query_form_and_lists(fnd: FndServer) -> None:
    response = fnd.request("POST", "/echo?a=query&q=1&q=2", data={"a": "body", "b": "x"},
                           headers={"Cookie": "c1=hello%20world; c1=second"})
    event = response.json()["event"]
    assert event["a"] == "body"  # the body wins over the query
    assert event["q"] == ["1", "2"]
    assert event["b"] == "x"
    assert event["request"]["cookies"] == {"c1": "hello world"}
    headers = event["request"]["headers"]
    assert "host" not in headers and "connection" not in headers
    assert headers["content-type"] == "application/x-www-form-urlencoded"


def test_event_json_body_keeps_types(fnd: FndServer) -> None:
    response = fnd.request("POST", "/echo?x=1", json={"n": 3, "ok": True, "list": [1, "a"]})
    event = response.json()["event"]
    assert event["n"] == 3 and event["ok"] is True and event["list"] == [1, "a"]
    assert event["x"] == "1"


def test_event_excludes_proxy_headers(fnd: FndServer) -> None:
    headers = {"X-Forwarded-For": "1.2.3.4", "X-Real-IP": "1.2.3.4", "Via": "x", "X-Keep": "k"}
    seen = fnd.get("/echo", headers=headers).json()["event"]["request"]["headers"]
    assert "x-forwarded-for" not in seen and "x-real-ip" not in seen and "via" not in seen
    assert seen["x-keep"] == "k"


def test_context_from_env_and_domain(fnd: FndServer) -> None:
    body = fnd.get("/echo").json()
    assert body["greeting"] == "hi from env"
    assert body["account"] == "AC00000000000000000000000000000000"
    assert body["path"] == "/echo"
    assert body["domain"] == fnd.url.removeprefix("http://")


def test_malformed_json_is_400_with_reason(fnd: FndServer) -> None:
    response = fnd.request("POST", "/echo", data=b"{not json",
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.text.count("\n") == 1 and "JSON" in response.text
    not_object = fnd.request("POST", "/echo", data=b"[1,2]",
                             headers={"Content-Type": "application/json"})
    assert not_object.status_code == 400


def test_oversized_body_is_413(fnd: FndServer) -> None:
    response = fnd.request("POST", "/echo", data=b"a=" + b"x" * (1024 * 1024 + 10),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413
    assert fnd.get("/hello").status_code == 200


def test_too_many_or_too_large_headers_are_431(fnd: FndServer) -> None:
    many = {f"X-H{i}": "v" for i in range(100)}
    assert fnd.get("/echo", headers=many).status_code == 431
    large = {"X-Big": "v" * 16000}
    assert fnd.get("/echo", headers=large).status_code == 431


def test_options_answered_by_fnd(fnd: FndServer) -> None:
    response = fnd.request("OPTIONS", "/boom")
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Access-Control-Allow-Headers"] == "*"
    assert response.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"


def test_head_has_no_body(fnd: FndServer) -> None:
    response = fnd.request("HEAD", "/hello")
    assert response.status_code == 200
    assert response.content == b""


def test_assets_and_index(fnd: FndServer) -> None:
    css = fnd.get("/style.css")
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")
    assert fnd.get("/").text.startswith("<!doctype html>")
    etag = css.headers["ETag"]
    assert fnd.get("/style.css", headers={"If-None-Match": etag}).status_code == 304


def test_uncaught_exception_is_500_without_traceback(fnd: FndServer) -> None:
    response = fnd.get("/boom")
    invocation_id = response.headers["X-Fnd-Invocation-Id"]
    assert response.status_code == 500
    # The exception's message may hold secrets: only its type and the id reach the client.
    assert response.text == f"the function failed: ValueError (invocation {invocation_id})"
    line = fnd.invocation(invocation_id)
    assert line["status"] == 500 and line["outcome"] == "error" and "boom" in line["reason"]


def test_callback_error_is_500(fnd: FndServer) -> None:
    response = fnd.get("/error_cb")
    assert response.status_code == 500 and response.text == "custom failure"


def test_callback_error_passed_is_the_answer_raised_is_hidden(fnd: FndServer) -> None:
    # "A HTTP 500 response with the provided payload": an exception the author passes to
    # callback is sent as text; a dict stays JSON. Only a *raised* one is hidden (/boom).
    passed = fnd.get("/error_cb", params={"kind": "exception"})
    assert passed.status_code == 500
    assert passed.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert passed.text == "ValueError: bad value"
    line = fnd.invocation(passed.headers["X-Fnd-Invocation-Id"])
    assert line["outcome"] == "error" and line["reason"] == "callback(error): ValueError: bad value"
    as_json = fnd.get("/error_cb", params={"kind": "dict"})
    assert as_json.status_code == 500
    assert as_json.headers["Content-Type"] == "application/json"
    assert as_json.json() == {"errorMessage": "card declined", "code": 7}
    raised = fnd.get("/boom")
    invocation_id = raised.headers["X-Fnd-Invocation-Id"]
    assert raised.text == f"the function failed: ValueError (invocation {invocation_id})"


def test_bad_header_and_unserialisable_are_500_naming_it(fnd: FndServer) -> None:
    bad = fnd.get("/badheader")
    assert bad.status_code == 500 and "X-Bad" in bad.text
    assert "evil" not in bad.headers.get("Set-Cookie", "")
    odd = fnd.get("/unserialisable")
    assert odd.status_code == 500 and "object" in odd.text


def test_bootstrap_runs_once_per_worker(fnd: FndServer) -> None:
    by_pid: dict[int, list[int]] = {}
    for _ in range(12):
        body = fnd.get("/bootstrap").json()
        by_pid.setdefault(body["pid"], []).append(body["boots"])
    for boots in by_pid.values():
        assert set(boots) == {1}


def test_output_is_logged_with_invocation_id(fnd: FndServer) -> None:
    response = fnd.get("/print")
    invocation_id = response.headers["X-Fnd-Invocation-Id"]
    levels = {"printed line": "info", "stderr line": "error", "logged line": "warning"}
    for text, level in levels.items():
        line = fnd.wait_for(lambda entry, t=text: entry.get("event") == "function output"
                            and t in str(entry.get("line")))
        assert line["invocation_id"] == invocation_id
        assert line["function"] == "/print" and line["worker_pid"]
        assert line["level"] == level, text


def test_one_log_line_per_invocation(fnd: FndServer) -> None:
    response = fnd.get("/hello?x=1")
    invocation_id = response.headers["X-Fnd-Invocation-Id"]
    line = fnd.invocation(invocation_id)
    for key in ("method", "path", "status", "outcome", "duration_ms", "queue_wait_ms", "cpu_ms",
                "peak_rss", "worker_pid"):
        assert line[key] is not None, key
    assert sum(1 for entry in fnd.lines if entry.get("invocation_id") == invocation_id
               and entry.get("event") == "invocation") == 1


def test_peak_rss_is_the_invocations_own_not_the_workers_lifetime(fnd: FndServer) -> None:
    big = fnd.get("/alloc", params={"mb": "64"})
    big_line = fnd.invocation(big.headers["X-Fnd-Invocation-Id"])
    assert big_line["peak_rss"] >= 64 << 20
    for _ in range(40):  # a later small call in the same worker (any of the pool may answer)
        small = fnd.get("/alloc", params={"mb": "0"})
        line = fnd.invocation(small.headers["X-Fnd-Invocation-Id"])
        if line["worker_pid"] == big_line["worker_pid"]:
            break
    else:
        raise AssertionError("the worker that allocated 64 MiB never answered again")
    assert 0 < line["peak_rss"] < big_line["peak_rss"] - (48 << 20), (line, big_line)


def test_statement_after_callback_does_not_run_but_finally_does(fnd: FndServer) -> None:
    with hit_server() as hits:
        response = fnd.get("/after_callback", params={"url": hits.url})
        assert response.text == "ok"
        fnd.invocation(response.headers["X-Fnd-Invocation-Id"])  # the invocation is over
        assert hits.wait_for("/finally-ran")
        assert "/statement-ran" not in hits.paths


def test_asyncio_task_is_cancelled_at_callback(fnd: FndServer) -> None:
    with hit_server() as hits:
        response = fnd.get("/async_task", params={"url": hits.url})
        assert response.text == "ok"
        fnd.invocation(response.headers["X-Fnd-Invocation-Id"])
        assert hits.paths == []


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout)


def test_leftover_thread_gets_worker_killed(fnd: FndServer) -> None:
    with hit_server() as hits:
        response = fnd.get("/thread_after", params={"url": hits.url})
        assert response.status_code == 200
        line = fnd.invocation(response.headers["X-Fnd-Invocation-Id"])
        _wait_gone(line["worker_pid"])
        assert not psutil.pid_exists(line["worker_pid"])
        assert "/thread-ran" not in hits.paths
    assert fnd.get("/hello").status_code == 200


def test_leftover_child_process_is_killed(fnd: FndServer) -> None:
    response = fnd.get("/child_process")
    child = response.json()["child"]
    _wait_gone(child)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


@pytest.mark.root_only  # the worker's cgroup
def test_leftover_in_its_own_session_is_killed_through_the_cgroup(fnd: FndServer) -> None:
    response = fnd.get("/escaped_child")
    assert response.status_code == 200
    answer = response.json()
    grandchild = answer["grandchild"]
    assert answer["pgid"] != answer["worker_pgid"]  # killpg on the worker cannot reach it
    _wait_gone(grandchild)
    assert not psutil.pid_exists(grandchild) or \
        psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
    assert fnd.get("/hello").status_code == 200


def test_time_limit_gives_504_and_kills_the_worker(fnd: FndServer) -> None:
    response = fnd.get("/spin")
    assert response.status_code == 504
    assert "timed out after 3 s" in response.text
    line = fnd.invocation(response.headers["X-Fnd-Invocation-Id"])
    assert line["outcome"] == "timeout"
    _wait_gone(line["worker_pid"])
    assert not psutil.pid_exists(line["worker_pid"])
    assert fnd.get("/hello").status_code == 200


def test_never_calling_back_gives_504(fnd: FndServer) -> None:
    assert fnd.get("/never").status_code == 504


def test_worker_exit_gives_502_with_reason(fnd: FndServer) -> None:
    response = fnd.get("/exit")
    assert response.status_code == 502
    assert "exited with code 3" in response.text
    segv = fnd.get("/segv")
    assert segv.status_code == 502 and "SIGSEGV" in segv.text
    assert fnd.get("/hello").status_code == 200


def test_400_concurrent_requests_each_get_their_own_answer(fnd: FndServer) -> None:
    async def scenario() -> list[tuple[int, str, dict[str, object]]]:
        connector = aiohttp.TCPConnector(limit=400)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(i: int) -> tuple[int, str, dict[str, object]]:
                async with session.get(fnd.url + "/echo", params={"i": str(i)}) as response:
                    return response.status, str(i), json.loads(await response.read())

            return await asyncio.gather(*(one(i) for i in range(400)))

    results = asyncio.run(scenario())
    assert len(results) == 400
    for status, sent, body in results:
        assert status == 200
        assert body["event"]["i"] == sent  # type: ignore[index]
