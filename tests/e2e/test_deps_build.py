"""`fnd deps` treats requirements.txt as the project author's input: fnd checks it before pip
sees it, pip runs as an unprivileged uid in a sandbox, wheels only unless the operator allows
sdists, and `.fnd` is never followed through a symlink (docs/handlers.md#python-packages)."""

from __future__ import annotations

import ast
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fnd.daemon.deps_folder import DEPS_DIR, deps_hash
from fnd.daemon.sandbox.uid_claim import FIRST_UID
from tests.e2e.hostile import alive
from tests.fndserver import FIXTURES, world_readable_copy

pytestmark = pytest.mark.slow

SDIST = "fnd_test_sdist_marker-1.0"


def _fnd_deps(*args: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "fnd.cli", "deps", *args],
                          capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


@pytest.fixture
def sdist_project() -> Iterator[Path]:
    """A copy of fixtures/deps_sdist, and beside it wheelhouse/ holding the hostile sdist."""
    project = world_readable_copy(FIXTURES / "deps_sdist")
    try:
        source = project / "vendor" / "fnd-test-sdist-marker"
        (source / "project.txt").write_text(f"{project}\n")
        wheelhouse = project.parent / "wheelhouse"
        wheelhouse.mkdir(mode=0o755)
        with tarfile.open(wheelhouse / f"{SDIST}.tar.gz", "w:gz") as archive:
            archive.add(source, arcname=SDIST)
            info = tarfile.TarInfo(f"{SDIST}/PKG-INFO")
            data = b"Metadata-Version: 2.1\nName: fnd-test-sdist-marker\nVersion: 1.0\n"
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for path in (source / "project.txt", wheelhouse / f"{SDIST}.tar.gz"):
            path.chmod(0o644)
        yield project
    finally:
        shutil.rmtree(project.parent, ignore_errors=True)


def _installed(project: Path) -> Path:
    return project / DEPS_DIR / deps_hash((project / "requirements.txt").read_bytes())


@pytest.mark.root_only
def test_an_sdist_is_not_built_by_default_and_a_local_path_is_refused(
    sdist_project: Path,
) -> None:
    project = sdist_project
    wheelhouse = str(project.parent / "wheelhouse")
    (project / "requirements.txt").write_text(f"{wheelhouse}/{SDIST}.tar.gz\n")
    done = _fnd_deps(str(project))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"fnd deps: requirements.txt line 1: `{wheelhouse}/{SDIST}.tar.gz` is a local path, "
        "not accepted in a project's requirements: name the package (and its version); the "
        "operator makes a folder of packages available with: fnd deps --find-links DIR")
    (project / "requirements.txt").write_text("vendor/fnd-test-sdist-marker\n")
    done = _fnd_deps(str(project))
    assert done.returncode == 1 and "is a local path" in done.stderr, done.stderr

    # By name, from a folder the operator allows: still wheels only without --allow-sdist.
    (project / "requirements.txt").write_text("fnd-test-sdist-marker==1.0\n")
    done = _fnd_deps("--find-links", wheelhouse, str(project))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "fnd deps installs wheels only" in done.stderr
    assert "fnd deps --allow-sdist" in done.stderr
    assert not (project / "written-by-sdist").exists()
    assert [p.name for p in (project / DEPS_DIR).iterdir()] == []  # nothing left behind
    assert not list(Path("/tmp").glob(f"fnd-deps-build-*/**/{SDIST}*"))


@pytest.mark.root_only
def test_an_allowed_sdist_builds_as_an_unprivileged_uid_that_reaches_nothing_else(
    sdist_project: Path,
) -> None:
    project = sdist_project
    wheelhouse = str(project.parent / "wheelhouse")
    done = _fnd_deps("--find-links", wheelhouse, "--allow-sdist", str(project),
                     env={"FND_TEST_CALLER_SECRET": "caller-secret"})
    assert done.returncode == 0, done.stdout + done.stderr
    found_py = _installed(project) / "fnd_test_sdist_marker" / "found.py"
    found = json.loads(ast.literal_eval(found_py.read_text().split(" = ", 1)[1]))
    assert found["uid"] == found["euid"] == found["gid"] != 0, found
    assert found["uid"] >= FIRST_UID and found["groups"] == []
    assert f"as uid {found['uid']}, sandboxed" in done.stdout
    assert found["shadow"].startswith("refused: "), found["shadow"]
    assert found["project_env"] == "refused: Permission denied"  # Landlock: not the project
    assert found["root_home"].startswith("refused: ")
    assert found["write_project"] == "refused: Permission denied"
    assert found["write_tmp"] == "refused: Permission denied"
    assert not (project / "written-by-sdist").exists()
    assert "FND_TEST_CALLER_SECRET" not in found["environ"]
    assert found["home"].startswith("/tmp/fnd-deps-build-") and found["home"].endswith("/home")
    assert not Path(found["home"]).exists()  # the private folder went with the build
    assert not alive(found["left_pid"]), "a process the build started outlived it"
    # What the workers import is root's now, and not writable by any worker uid.
    for path in [_installed(project), *_installed(project).rglob("*")]:
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (0, 0), path
        assert st.st_mode & 0o022 == 0, path


def test_an_include_outside_the_project_is_refused_without_reading_it() -> None:
    project = world_readable_copy(FIXTURES / "deps")
    try:
        shadow = Path("/etc/shadow").read_text() if os.geteuid() == 0 else "root:!:"
        secret = project.parent / "other" / ".env"
        secret.parent.mkdir()
        secret.write_text("OTHER_SECRET=shh\n")
        (project / "link.txt").symlink_to("/etc/shadow")
        for line, shown in (("-r /etc/shadow", "-r /etc/shadow"),
                            ("--requirement=/etc/shadow", "--requirement /etc/shadow"),
                            ("-c ../../../../../../etc/shadow", "-c ../../../../../../etc/shadow"),
                            ("-r ../other/.env", "-r ../other/.env"),
                            ("-r link.txt", "-r link.txt")):
            (project / "requirements.txt").write_text(f"humanize\n{line}\n")
            done = _fnd_deps(str(project))
            assert done.returncode == 1, done.stdout + done.stderr
            output = done.stdout + done.stderr
            assert f"requirements.txt line 2: {shown}" in output, output
            lines = shadow.splitlines()
            hashes = [f.split(":")[1] for f in lines if len(f.split(":")[1]) > 3]
            for leaked in [*lines, *hashes, "OTHER_SECRET", "shh"]:
                assert leaked not in output, (line, output)
            assert not (project / ".fnd").exists()  # refused before anything was made
    finally:
        shutil.rmtree(project.parent, ignore_errors=True)


class _Index(http.server.BaseHTTPRequestHandler):
    asked: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.asked.append(self.path)
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


def test_an_index_in_requirements_is_refused_naming_the_operator_flag() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    project = world_readable_copy(FIXTURES / "deps")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
        for option, flag in ((f"--index-url {url}", "--index-url URL"),
                             (f"-i {url}", "--index-url URL"),
                             (f"--extra-index-url={url}", "--extra-index-url URL"),
                             (f"--find-links {url}", "--find-links DIR"),
                             ("--trusted-host 127.0.0.1", "--trusted-host HOST")):
            (project / "requirements.txt").write_text(f"{option}\nhumanize\n")
            done = _fnd_deps(str(project))
            assert done.returncode == 1, done.stdout + done.stderr
            name = option.split()[0].split("=")[0]
            assert done.stderr.strip().splitlines()[-1] == (
                f"fnd deps: requirements.txt line 1: {name} is not accepted in a project's "
                "requirements (it changes where packages come from); the operator allows a "
                f"source with: fnd deps {flag}")
        for line, says in ((f"humanize @ {url}humanize-4.0.tar.gz", "is a URL"),
                           (f"{url}humanize-4.0.tar.gz", "is a URL"),
                           ("-e git+https://127.0.0.1/x.git#egg=x", "-e is not accepted")):
            (project / "requirements.txt").write_text(f"{line}\n")
            done = _fnd_deps(str(project))
            assert done.returncode == 1 and says in done.stderr, done.stderr
        assert _Index.asked == []  # pip never asked the project's index
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(project.parent, ignore_errors=True)


def test_a_symlinked_fnd_folder_is_refused_and_its_target_untouched() -> None:
    project = world_readable_copy(FIXTURES / "deps")
    try:
        elsewhere = project.parent / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        elsewhere.chmod(0o700)
        (project / ".fnd").symlink_to(elsewhere)
        done = _fnd_deps(str(project))
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.strip().splitlines()[-1] == (
            f"fnd deps: {project}/.fnd is a symlink: fnd deps does not follow it (it makes "
            "that folder itself); remove it and run fnd deps again")
        assert list(elsewhere.iterdir()) == []
        assert elsewhere.stat().st_mode & 0o777 == 0o700
        pruned = _fnd_deps("--prune", str(project))
        assert pruned.returncode == 1 and "is a symlink" in pruned.stderr
        assert list(elsewhere.iterdir()) == []

        # .fnd real, .fnd/deps a symlink: the same.
        (project / ".fnd").unlink()
        (project / ".fnd").mkdir()
        (project / ".fnd" / "deps").symlink_to(elsewhere)
        done = _fnd_deps(str(project))
        assert done.returncode == 1 and f"{project}/.fnd/deps is a symlink" in done.stderr
        assert list(elsewhere.iterdir()) == [] and elsewhere.stat().st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(project.parent, ignore_errors=True)
