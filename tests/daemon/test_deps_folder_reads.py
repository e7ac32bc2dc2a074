"""What the daemon reads of a project's packages as root is never followed through a symlink
and never unbounded (daemon/deps_folder.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fnd.daemon.deps_folder import MAX_READ, DepsMismatch, installed_folder, wanted_folder

pytestmark = pytest.mark.unit


def test_a_symlinked_requirements_file_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("humanize\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "requirements.txt").symlink_to(secret)
    with pytest.raises(DepsMismatch, match="symlink"):
        wanted_folder(project)


def test_a_requirements_fifo_or_huge_file_is_refused_without_hanging(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "requirements.txt")
    with pytest.raises(DepsMismatch, match="not a regular file"):
        wanted_folder(tmp_path)
    (tmp_path / "requirements.txt").unlink()
    (tmp_path / "requirements.txt").write_bytes(b"#" * (MAX_READ + 1))
    with pytest.raises(DepsMismatch, match="larger than"):
        wanted_folder(tmp_path)


def test_a_symlinked_fnd_folder_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    project = tmp_path / "project"
    project.mkdir()
    (project / "requirements.txt").write_text("humanize\n")
    folder = wanted_folder(project)
    assert folder is not None
    (elsewhere / "deps" / folder.name).mkdir(parents=True)
    (elsewhere / "deps" / folder.name / ".fnd-deps.json").write_text('{"shared": {}}')
    (project / ".fnd").symlink_to(elsewhere)
    with pytest.raises(DepsMismatch, match=r"\.fnd is a symlink"):
        installed_folder(project)


def test_a_missing_folder_still_says_the_command(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("humanize\n")
    with pytest.raises(DepsMismatch, match="is missing.*run: fnd deps"):
        installed_folder(tmp_path)
