"""Checked deploys: a generation runs the code read when it was made, and a broken function
stops `fnd serve` and `fnd reload` (unless told to serve the rest) instead of deploying itself
silently and reporting healthy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.fndserver import FIXTURES, FndServer, running, world_readable_copy

BROKEN_SYNTAX = "def handler(context, event, callback)\n    callback(None, 'x')\n"
BOOT_FAILS = "raise RuntimeError('no database')\n"
NO_HANDLER = "def handle(context, event, callback):\n    callback(None, 'x')\n"


def _fnd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "fnd.cli", *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def _write(fnd: FndServer, name: str, text: str) -> None:
    path = fnd.project / "functions" / name
    path.write_text(text)
    path.chmod(0o644)


def test_a_reload_with_a_broken_function_fails_and_the_old_code_keeps_serving() -> None:
    with running("ops") as fnd:
        assert fnd.get("/hello").text == "hello"
        _write(fnd, "hello.py", BROKEN_SYNTAX)
        _write(fnd, "boot.py", BOOT_FAILS)
        reload = _fnd("reload", "--control", fnd.control)
        assert reload.returncode != 0
        assert "hello.py:1: SyntaxError" in reload.stderr, reload.stderr
        assert "previous code keeps serving" in reload.stderr
        # The workers of the serving generation run the code read at start, not the file now.
        for _ in range(5):
            answer = fnd.get("/hello")
            assert answer.status_code == 200 and answer.text == "hello"
        assert fnd.get("/boot").status_code == 404  # the new route never went live
        status = _fnd("status", "--control", fnd.control, "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["health"] == "ok"


def test_a_bootstrap_error_or_a_missing_handler_is_found_before_traffic() -> None:
    with running("ops") as fnd:
        _write(fnd, "boot.py", BOOT_FAILS)
        _write(fnd, "nohandler.py", NO_HANDLER)
        reload = _fnd("reload", "--control", fnd.control)
        assert reload.returncode != 0
        assert "/boot: error loading functions/boot.py: RuntimeError: no database" in \
            reload.stderr, reload.stderr
        assert "/nohandler: functions/nohandler.py defines no handler" in reload.stderr
        assert fnd.get("/hello").text == "hello"


def test_serve_refuses_a_broken_project_and_names_each_problem() -> None:
    with running("ops", files={"functions/boot.py": BOOT_FAILS}, ready=False) as server:
        line = server.wait_for(lambda entry: entry.get("event") == "cannot start")
        assert "/boot" in line["reason"] and "no database" in line["reason"]
        assert "--allow-broken" in line["reason"]
        assert server.process.wait(30) == 1


def test_allow_broken_serves_the_rest_and_status_is_degraded() -> None:
    with running("ops", "--allow-broken", files={"functions/boot.py": BOOT_FAILS}) as fnd:
        assert fnd.get("/hello").text == "hello"
        failed = fnd.get("/boot")
        assert failed.status_code == 500
        fnd.invocation(failed.headers["X-Fnd-Invocation-Id"])
        assert fnd.status()["totals"]["error"] >= 1  # counted as an error, not "rejected"
        status = _fnd("status", "--control", fnd.control)
        assert status.returncode == 3, status.stdout
        assert "function problem" in status.stdout and "/boot" in status.stdout
        as_json = _fnd("status", "--control", fnd.control, "--json")
        answer = json.loads(as_json.stdout)
        assert as_json.returncode == 3 and answer["health"] == "degraded"
        assert any("/boot" in reason for reason in answer["health_reasons"])


def test_a_release_switched_by_symlink_is_served_after_reload() -> None:
    # docs/operating.md's deploy: each release in its own folder, the service on a symlink.
    first = world_readable_copy(FIXTURES / "ops")
    second = world_readable_copy(FIXTURES / "ops")
    (second / "functions" / "hello.py").write_text(
        "def handler(context, event, callback):\n    callback(None, 'hello from release 2')\n")
    current = first.parent / "current"
    current.symlink_to(first)
    server = FndServer(current, [])
    try:
        server.wait_ready()
        assert server.get("/hello").text == "hello"
        staged = first.parent / "current.new"
        staged.symlink_to(second)
        staged.replace(current)  # an atomic switch, as `mv -T` does
        assert _fnd("reload", "--control", server.control).returncode == 0
        assert server.get("/hello").text == "hello from release 2"
        staged.symlink_to(first)  # and back: a rollback is the same move
        staged.replace(current)
        assert _fnd("reload", "--control", server.control).returncode == 0
        assert server.get("/hello").text == "hello"
    finally:
        server.stop()
        shutil.rmtree(first.parent, ignore_errors=True)
        shutil.rmtree(second.parent, ignore_errors=True)
