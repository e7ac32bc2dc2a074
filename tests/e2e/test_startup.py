"""Start-up: problems reported with file names, the rest served; --strict refuses (SPEC 1.2)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.fndserver import FIXTURES, FndServer, running, world_readable_copy


def test_problems_are_reported_and_other_functions_served() -> None:
    with running("problems") as fnd:
        problems = [line["problem"] for line in fnd.lines if line.get("event") == "project problem"]
        assert any("broken.py" in p for p in problems)
        assert any("twice.py" in p and "twice.protected.py" in p for p in problems)
        assert fnd.get("/good").text == "good"
        broken = fnd.get("/broken")
        assert broken.status_code == 500 and "broken.py" in broken.text
        assert fnd.get("/twice").status_code == 404


def test_missing_handler_and_bootstrap_error_are_500_naming_the_file() -> None:
    with running("problems") as fnd:
        missing = fnd.get("/nohandler")
        assert missing.status_code == 500 and "nohandler.py" in missing.text
        failed = fnd.get("/bootfail")
        assert failed.status_code == 500 and "bootstrap failed" in failed.text
        again = fnd.get("/bootfail")  # the next request tries the bootstrap again
        assert again.status_code == 500 and "bootstrap failed" in again.text
        assert fnd.get("/good").text == "good"


def test_strict_refuses_to_start() -> None:
    project = world_readable_copy(FIXTURES / "problems")
    server = FndServer(project, ["--strict"])  # --strict wins over allow_broken in fnd.toml
    line = server.wait_for(lambda entry: entry.get("event") == "cannot start")
    assert "problem(s) in the project" in line["reason"] and ".py" in line["reason"]
    assert server.process.wait(30) == 1


def _without_cap_kill(command: list[str]) -> list[str]:
    # Out of the bounding set: as root, the exec'd daemon then lacks it in every set.
    return ["setpriv", "--inh-caps=-kill", "--bounding-set=-kill", *command]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and util-linux setpriv")
def test_strict_without_cap_kill_refuses_to_start_naming_it() -> None:
    project = world_readable_copy(FIXTURES / "supervision")
    server = FndServer(project, [], wrap=_without_cap_kill)
    try:
        line = server.wait_for(lambda entry: entry.get("event") in ("cannot start", "ready"))
        assert line["event"] == "cannot start"
        assert "missing capability CAP_KILL" in line["reason"]
        assert "CAP_SETUID" not in line["reason"]  # only what is missing is named
        assert server.process.wait(30) == 1
    finally:
        server.stop()
        shutil.rmtree(project.parent, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and util-linux setpriv")
def test_permissive_without_cap_kill_starts_and_warns() -> None:
    env = {"FND_SANDBOX": "permissive"}
    with running("supervision", env=env, wrap=_without_cap_kill) as fnd:
        warning = fnd.wait_for(lambda line: line.get("event") == "sandbox degraded")
        assert "missing capability CAP_KILL" in warning["reason"]
        assert fnd.get("/hello").text == "hello"
