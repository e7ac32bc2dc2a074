"""A project's own packages (requirements.txt, `fnd deps`): served from .fnd/deps/<hash>, and a
project whose requirements are not installed is refused at `fnd serve` and at `fnd reload`
with the command that fixes it, while the old code keeps serving."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fnd.daemon.deps_folder import DEPS_DIR, MANIFEST, deps_hash
from tests.fndserver import FIXTURES, FndServer, world_readable_copy

pytestmark = pytest.mark.slow


def _fnd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "fnd.cli", *args], capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def _refused(project: Path, *args: str) -> str:
    """`fnd serve` on the project: it must not start; returns its reason."""
    server = FndServer(project, list(args))
    try:
        line = server.wait_for(lambda entry: entry.get("event") in ("cannot start", "ready"))
        assert line["event"] == "cannot start", "fnd served a project it should refuse"
        assert server.process.wait(30) == 1
        return str(line["reason"])
    finally:
        server.stop()


def test_deps_are_installed_served_and_a_mismatch_is_refused_at_serve_and_reload() -> None:
    project = world_readable_copy(FIXTURES / "deps")
    try:
        reason = _refused(project)
        assert f"fnd deps {project}" in reason, reason
        assert "requirements.txt is not installed" in reason
        # Not one broken function that --allow-broken may serve past: a deploy error.
        assert f"fnd deps {project}" in _refused(project, "--allow-broken")

        done = _fnd("deps", str(project))
        assert done.returncode == 0, done.stderr
        assert "installed: .fnd/deps/" in done.stdout and "humanize" in done.stdout
        first = project / DEPS_DIR / deps_hash((project / "requirements.txt").read_bytes())

        fnd = FndServer(project, [])
        try:
            fnd.wait_ready()
            answer = fnd.get("/size")
            assert (answer.status_code, answer.text) == (200, "1.0 MB from deps")
            # Granted read-only: the rest of the hidden project root stays out of reach.
            assert fnd.get("/secrets").text == "refused: Permission denied"

            (project / "requirements.txt").write_text("humanize\nsix\n")
            reload = _fnd("reload", "--control", fnd.control)
            assert reload.returncode != 0
            assert f"fnd deps {project}" in reload.stderr, reload.stderr
            assert "previous code keeps serving" in reload.stderr
            for _ in range(3):  # fresh workers of the old generation still import from it
                assert fnd.get("/size").text == "1.0 MB from deps"

            done = _fnd("deps", str(project))
            assert done.returncode == 0, done.stderr
            reload = _fnd("reload", "--control", fnd.control)
            assert reload.returncode == 0, reload.stderr
            assert fnd.get("/size").text == "1.0 MB from deps"

            pruned = _fnd("deps", "--prune", str(project))
            assert pruned.returncode == 0, pruned.stderr
            assert pruned.stdout.strip() == f"removed: {DEPS_DIR}/{first.name}"
            assert not first.exists()
            assert fnd.get("/size").text == "1.0 MB from deps"  # the new folder serves
        finally:
            fnd.stop()
    finally:
        shutil.rmtree(project.parent, ignore_errors=True)


@pytest.mark.root_only
def test_a_deps_file_the_worker_uid_cannot_read_stops_serve_with_the_file_named() -> None:
    project = world_readable_copy(FIXTURES / "deps")
    try:
        # The folder as `fnd deps` leaves it, then one file made private by hand.
        folder = project / DEPS_DIR / deps_hash((project / "requirements.txt").read_bytes())
        (folder / "humanize").mkdir(parents=True)
        (folder / MANIFEST).write_text(json.dumps({"installed": {}, "shared": {}}))
        private = folder / "humanize" / "__init__.py"
        private.write_text("def naturalsize(n):\n    return 'x'\n")
        for path in (project / ".fnd", project / DEPS_DIR, folder, folder / "humanize"):
            path.chmod(0o755)
        (folder / MANIFEST).chmod(0o644)
        private.chmod(0o600)
        reason = _refused(project)
        assert f"{private}: not readable by worker uid" in reason, reason
        assert f"chmod -R a+rX {folder}" in reason
        os.chmod(private, 0o644)
    finally:
        shutil.rmtree(project.parent, ignore_errors=True)
