"""`fnd init`: the scaffolded project, its refusals, and its own tests run for real."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fnd.author.scaffold import ScaffoldError, create_project
from fnd.cli import main
from fnd.daemon.project import scan_project

EXPECTED = [
    ".env.example", ".gitignore", "README.md", "assets/index.html", "fnd.toml",
    "functions/api/hello.py", "functions/custom.py", "functions/sms/reply.py",
    "tests/test_functions.py",
]


@pytest.fixture
def where() -> Iterator[Path]:
    # World-readable, unlike pytest's tmp_path: sandboxed workers run as other uids.
    top = Path(tempfile.mkdtemp(prefix="fnd-init-", dir="/tmp"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def test_creates_the_project_files(where: Path) -> None:
    target = where / "my-app"
    files = create_project(target)
    assert [f.relative_to(target).as_posix() for f in files] == EXPECTED
    assert not list(target.rglob("*.tmpl"))
    assert "<title>my-app</title>" in (target / "assets" / "index.html").read_text()
    assert "AUTH_TOKEN=" in (target / ".env.example").read_text()
    assert ".env" in (target / ".gitignore").read_text().splitlines()


def test_files_are_readable_by_workers_whatever_the_umask(where: Path) -> None:
    target = where / "app"
    create_project(target)
    for path in [target, *target.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), path


def test_the_project_scans_without_problems(where: Path) -> None:
    target = where / "app"
    create_project(target)
    project = scan_project(target)
    assert project.problems == ()
    assert sorted(project.routes) == ["/api/hello", "/custom", "/index.html", "/sms/reply"]


def test_an_existing_empty_folder_is_used(where: Path) -> None:
    create_project(where)
    assert (where / "functions" / "custom.py").is_file()


def test_refuses_a_non_empty_folder_or_a_file(where: Path) -> None:
    (where / "keep.txt").write_text("mine")
    with pytest.raises(ScaffoldError, match="not empty"):
        create_project(where)
    assert [p.name for p in where.iterdir()] == ["keep.txt"]  # nothing written
    with pytest.raises(ScaffoldError, match="not a folder"):
        create_project(where / "keep.txt")


def test_cli_init(where: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(where / "app")]) == 0
    assert "created" in capsys.readouterr().out
    assert main(["init", str(where / "app")]) == 1
    assert "not empty" in capsys.readouterr().err


@pytest.mark.slow  # a pytest run of its own, against a real daemon
def test_the_scaffolded_tests_pass_against_the_real_daemon(where: Path) -> None:
    target = where / "app"
    create_project(target)
    # The command the project's README gives, run as given: fnd's own Python, not a bare
    # `pytest` that may belong to another environment without fnd.
    assert f"{sys.executable} -m pytest" in (target / "README.md").read_text()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=target, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout
