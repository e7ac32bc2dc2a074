"""Start-up check that the worker uid can read the interpreter, venv and project."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fnd.daemon.sandbox import read_check as sandbox_check
from fnd.daemon.sandbox.read_check import check_readable_for_uid, interpreter_paths, project_paths

pytestmark = pytest.mark.root_only  # worker uids, cgroups, mounts

UID = 61000


@pytest.fixture
def root() -> Iterator[str]:
    assert os.geteuid() == 0, "the sandbox check tests must run as root (CI does)"
    path = tempfile.mkdtemp(prefix="fnd-check-test-", dir="/tmp")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _file(path: str, mode: int = 0o644) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("x = 1\n")
    os.chmod(path, mode)
    return path


def test_this_interpreter_is_readable_for_the_worker_uid() -> None:
    assert os.geteuid() == 0
    assert check_readable_for_uid(UID, UID, interpreter_paths()) == []


def test_world_readable_project_passes(root: str) -> None:
    _file(os.path.join(root, "project", "functions", "hello.py"))
    _file(os.path.join(root, "project", "assets", "a.css"))
    for d in ("project", "project/functions", "project/assets"):
        os.chmod(os.path.join(root, d), 0o755)
    paths = project_paths(os.path.join(root, "project"))
    assert len(paths) == 4
    assert check_readable_for_uid(UID, UID, paths) == []


def test_private_directory_is_explained(root: str) -> None:
    private = os.path.join(root, "private")
    target = _file(os.path.join(private, "functions", "hello.py"))
    os.chmod(private, 0o700)
    [problem] = check_readable_for_uid(UID, UID, [target])
    assert problem.startswith(f"{target}: not readable by worker uid {UID}")
    assert f"{private} is mode 0700 owned by uid 0" in problem
    assert "chmod o+rX" in problem


def test_unreadable_file_is_explained(root: str) -> None:
    target = _file(os.path.join(root, "secret.py"), 0o600)
    [problem] = check_readable_for_uid(UID, UID, [target])
    assert f"{target} is mode 0600" in problem


def test_interpreter_under_a_private_dir_gets_the_venv_advice(
    root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = os.path.join(root, "home")
    python = _file(os.path.join(home, ".pyenv", "bin", "python3"), 0o755)
    os.chmod(home, 0o700)
    monkeypatch.setattr(sandbox_check, "interpreter_paths", lambda: [python])
    [problem] = check_readable_for_uid(UID, UID, [python])
    assert f"python lives under {home} which is mode 0700" in problem
    assert "build the venv from /usr/bin/python3 in a world-readable place" in problem


def test_group_bits_count_for_the_worker_gid(root: str) -> None:
    shared = os.path.join(root, "shared")
    target = _file(os.path.join(shared, "f.py"), 0o640)
    os.chmod(shared, 0o750)
    os.chown(shared, 0, UID)
    os.chown(target, 0, UID)
    assert check_readable_for_uid(UID, UID, [target]) == []
    assert len(check_readable_for_uid(UID + 1, UID + 1, [target])) == 1


def test_missing_path_is_reported(root: str) -> None:
    [problem] = check_readable_for_uid(UID, UID, [os.path.join(root, "nope")])
    assert "No such file or directory" in problem


def test_files_behind_one_closed_directory_are_one_problem(root: str) -> None:
    closed = Path(root) / "closed"
    (closed / "functions").mkdir(parents=True)
    files = [closed / "functions" / f"f{i}.py" for i in range(20)]
    for file in files:
        file.write_text("x = 1\n")
        file.chmod(0o644)
    (closed / "functions").chmod(0o755)
    closed.chmod(0o700)
    problems = check_readable_for_uid(UID, UID, [str(f) for f in files])
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{closed} is mode 0700")
    assert "cannot reach the 20 files behind it" in problems[0] and len(problems[0]) < 400
