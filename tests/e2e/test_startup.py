"""Start-up: problems reported with file names, the rest served; --strict refuses
(docs/operating.md#deploying)."""

from __future__ import annotations

import shutil

import pytest

from tests.fndserver import FndServer, running


def _production_500(fnd: FndServer, path: str, body: str) -> str:
    """The 500 a client gets: a reason without paths and the invocation id; the log line's
    reason (returned) says why, with the file."""
    response = fnd.get(path)
    invocation_id = response.headers["X-Fnd-Invocation-Id"]
    assert response.status_code == 500
    assert response.text.rstrip("\n") == f"{body} (invocation {invocation_id})"
    assert ".py" not in response.text and "Traceback" not in response.text
    line = fnd.invocation(invocation_id)
    assert line["outcome"] == "error"
    return str(line["reason"])


def test_problems_are_reported_and_other_functions_served() -> None:
    with running("problems") as fnd:
        problems = [line["problem"] for line in fnd.lines if line.get("event") == "project problem"]
        assert any("broken.py" in p for p in problems)
        assert any("twice.py" in p and "twice.protected.py" in p for p in problems)
        assert fnd.get("/good").text == "good"
        reason = _production_500(fnd, "/broken", "the function could not be loaded")
        assert "broken.py" in reason and "SyntaxError" in reason
        assert fnd.get("/twice").status_code == 404


def test_missing_handler_and_bootstrap_error_are_500_naming_the_file_in_the_log() -> None:
    with running("problems") as fnd:
        reason = _production_500(fnd, "/nohandler", "the function defines no handler")
        assert "nohandler.py" in reason
        for _ in range(2):  # the next request tries the bootstrap again
            reason = _production_500(fnd, "/bootfail",
                                     "the function could not be loaded: RuntimeError")
            assert "bootfail.py" in reason and "bootstrap failed" in reason
        assert fnd.get("/good").text == "good"


def test_dev_mode_500_bodies_name_the_file_and_carry_the_traceback() -> None:
    with running("problems", "--dev") as fnd:
        assert "broken.py" in fnd.get("/broken").text
        assert "nohandler.py" in fnd.get("/nohandler").text
        failed = fnd.get("/bootfail").text
        assert "bootfail.py" in failed and "bootstrap failed" in failed
        assert "Traceback (most recent call last)" in failed


def test_strict_refuses_to_start() -> None:
    # --strict wins over allow_broken in fnd.toml
    with running("problems", "--strict", ready=False) as server:
        line = server.wait_for(lambda entry: entry.get("event") == "cannot start")
        assert "problem(s)" in line["reason"] and ".py" in line["reason"]
        assert server.process.wait(30) == 1


def _without_cap_kill(command: list[str]) -> list[str]:
    # Out of the bounding set: as root, the exec'd daemon then lacks it in every set.
    return ["setpriv", "--inh-caps=-kill", "--bounding-set=-kill", *command]


@pytest.mark.root_only  # capabilities to drop
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_strict_without_cap_kill_refuses_to_start_naming_it() -> None:
    with running("supervision", wrap=_without_cap_kill, ready=False) as server:
        line = server.wait_for(lambda entry: entry.get("event") in ("cannot start", "ready"))
        assert line["event"] == "cannot start"
        assert "missing capability CAP_KILL" in line["reason"]
        assert "CAP_SETUID" not in line["reason"]  # only what is missing is named
        assert server.process.wait(30) == 1


@pytest.mark.root_only  # capabilities to drop
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_permissive_without_cap_kill_starts_and_warns() -> None:
    env = {"FND_SANDBOX": "permissive"}
    with running("supervision", env=env, wrap=_without_cap_kill) as fnd:
        warning = fnd.wait_for(lambda line: line.get("event") == "sandbox degraded")
        assert "missing capability CAP_KILL" in warning["reason"]


def test_misspelt_setting_refuses_to_start_with_a_suggestion() -> None:
    with running("ops", files={"fnd.toml": "worker_max = 3\n"}, ready=False) as server:
        line = server.wait_for(lambda entry: entry.get("event") == "cannot start")
        assert "unknown setting 'worker_max' (did you mean 'workers_max'?)" in line["reason"]
        assert server.process.wait(30) == 1


def test_unknown_routes_and_fnd_variables_are_warned_about_at_start() -> None:
    toml = '[functions."/helo"]\ntimeout = 2\n[functions."/hello"]\ntimeout = 2\n'
    with running("ops", files={"fnd.toml": toml}, env={"FND_WORKER_MAX": "3"}) as fnd:
        warnings = [line["reason"] for line in fnd.lines
                    if line.get("event") == "setting ignored"]
        assert "environment variable FND_WORKER_MAX is not an fnd setting; ignored " \
            "(did you mean 'FND_WORKERS_MAX'?)" in warnings
        assert '[functions."/helo"] in fnd.toml names no function; its settings are unused ' \
            "(did you mean '/hello'?)" in warnings
        assert not [w for w in warnings if '"/hello"' in w or "FND_VENV" in w]
        assert fnd.get("/hello").text == "hello"
