"""The function author's tools against the real daemon: `fnd invoke` and ``fnd.testing``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fnd.testing import FndClient, LaunchError, fnd_client
from tests.fndserver import FIXTURES, world_readable_copy


@pytest.fixture(scope="module")
def project() -> Iterator[Path]:
    copy = world_readable_copy(FIXTURES / "author")  # sandboxed workers must read it
    yield copy
    invoke(copy, "--stop")  # the warm daemon the calls started (tests/e2e/test_invoke_warm.py)
    shutil.rmtree(copy.parent, ignore_errors=True)


def invoke(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "fnd.cli", "invoke", *args, "--project", str(project)],
        capture_output=True, text=True, timeout=120,
    )


def split(stdout: str) -> tuple[str, dict[str, str], str]:
    """Status line, headers and body of what `fnd invoke` printed."""
    head, _, body = stdout.partition("\n\n")
    status, *lines = head.splitlines()
    return status, dict(line.split(": ", 1) for line in lines), body


# --- fnd invoke -------------------------------------------------------------------------------


def test_invoke_get_prints_status_headers_body_and_function_output(project: Path) -> None:
    done = invoke(project, "/greet?name=Ada")
    assert done.returncode == 0, done.stderr
    status, headers, body = split(done.stdout)
    assert status == "HTTP 200 OK"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Fnd-Invocation-Id"]
    assert json.loads(body) == {"greeting": "Hello, Ada!", "event": {"name": "Ada"}}
    assert "[stdout] greeting Ada" in done.stderr


def test_invoke_form_fields_and_json_body(project: Path) -> None:
    form = invoke(project, "greet", "-d", "name=Grace", "-d", "tag=a", "-d", "tag=b+c")
    assert json.loads(split(form.stdout)[2])["event"] == {"name": "Grace", "tag": ["a", "b+c"]}
    body = invoke(project, "/greet", "--json", '{"name": "Linus", "n": 3, "ok": true}')
    assert json.loads(split(body.stdout)[2])["event"] == {"name": "Linus", "n": 3, "ok": True}


def test_invoke_by_function_file(project: Path) -> None:
    done = invoke(project, "functions/greet.py")
    assert done.returncode == 0 and "Hello, world!" in done.stdout
    absolute = invoke(project, str(project / "functions" / "hook.protected.py"), "-d", "a=1")
    assert json.loads(split(absolute.stdout)[2]) == {"a": "1"}


def test_invoke_signs_protected_functions_like_twilio(project: Path) -> None:
    done = invoke(project, "/hook", "-d", "From=+15551234567", "-d", "Body=hi")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(split(done.stdout)[2]) == {"From": "+15551234567", "Body": "hi"}
    as_json = invoke(project, "/hook", "--json", '{"EventType": "x"}')
    event = json.loads(split(as_json.stdout)[2])
    assert event["EventType"] == "x" and "bodySHA256" in event


def test_invoke_exit_status_follows_5xx(project: Path) -> None:
    failed = invoke(project, "/fail")
    assert failed.returncode == 1
    assert split(failed.stdout)[0] == "HTTP 500 Internal Server Error"
    assert split(failed.stdout)[2].startswith("the function failed: RuntimeError (invocation ")
    assert "[reason] handler raised RuntimeError: it broke" in failed.stderr
    slow = invoke(project, "/slow", "--timeout", "1")
    assert slow.returncode == 1 and split(slow.stdout)[0].startswith("HTTP 504")
    missing = invoke(project, "/nope")
    assert missing.returncode == 0 and split(missing.stdout)[0] == "HTTP 404 Not Found"


def test_invoke_usage_errors(project: Path, tmp_path: Path) -> None:
    bad_field = invoke(project, "/greet", "-d", "novalue")
    assert bad_field.returncode == 1 and "key=value" in bad_field.stderr
    bad_json = invoke(project, "/greet", "--json", "{oops")
    assert bad_json.returncode == 1 and "--json" in bad_json.stderr
    not_project = invoke(tmp_path, "/greet")
    assert not_project.returncode == 1 and "not a project" in not_project.stderr


# --- fnd.testing ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fnd(project: Path) -> Iterator[FndClient]:
    with fnd_client(project, "--timeout", "2") as client:
        yield client


def test_client_get_and_post(fnd: FndClient) -> None:
    got = fnd.get("/greet", params={"name": "Ada"})
    assert got.status == 200 and got.headers["content-type"] == "application/json"
    assert got.json()["greeting"] == "Hello, Ada!"
    posted = fnd.post("/greet", data={"name": "Grace"})
    assert posted.json()["event"] == {"name": "Grace"}
    as_json = fnd.post("/greet", json={"name": "Linus", "n": 1})
    assert as_json.json()["event"] == {"name": "Linus", "n": 1}


def test_client_output_log_line_cookies_and_binary(fnd: FndClient) -> None:
    reply = fnd.get("/greet", params={"name": "Ada"})
    assert fnd.output(reply) == ["greeting Ada"]
    line = fnd.log_line(reply)
    assert line["status"] == 200 and line["outcome"] == "ok"
    assert fnd.get("/cookie").cookies == ["session=abc; Max-Age=60; HttpOnly; Secure"]
    assert fnd.get("/binary").body == bytes([0, 1, 2, 255])
    assert fnd.get("/note.txt").text == "asset text\n"


def test_client_has_production_semantics(fnd: FndClient) -> None:
    failed = fnd.get("/fail")
    assert failed.status == 500
    assert failed.text == (
        f"the function failed: RuntimeError (invocation {failed.headers['X-Fnd-Invocation-Id']})")
    assert "Traceback" not in failed.text
    slow = fnd.get("/slow")
    assert slow.status == 504
    assert fnd.log_line(slow)["outcome"] == "timeout"


def test_client_signs_protected_requests(fnd: FndClient) -> None:
    assert fnd.post("/hook", data={"Body": "hi"}).status == 401
    assert fnd.post("/hook", data={"Body": "hi"}, sign=True).json() == {"Body": "hi"}
    assert fnd.get("/hook", params={"q": "1"}, sign=True).json() == {"q": "1"}
    signed_json = fnd.post("/hook", json={"a": [1, 2]}, sign=True)
    assert signed_json.status == 200 and signed_json.json()["a"] == [1, 2]


def test_client_signs_for_the_public_url(project: Path) -> None:
    env = {"FND_PUBLIC_URL": "https://fns.example.com"}
    with fnd_client(project, env=env) as client:
        assert client.post("/hook", data={"x": "1"}, sign=True).json() == {"x": "1"}


def test_client_reports_why_fnd_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="not a project"), fnd_client(tmp_path):
        pass
