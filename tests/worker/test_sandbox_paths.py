"""Which paths a worker may read: hidden paths are carved out of readable ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fnd.worker.sandbox import paths as sandbox_paths
from fnd.worker.sandbox.paths import readable

pytestmark = pytest.mark.unit  # no processes, no network, no root


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for d in ("srv/app/functions", "srv/app/assets", "srv/app/.venv/lib", "srv/other", "etc/fnd"):
        (tmp_path / d).mkdir(parents=True)
    for f in ("srv/app/.env", "srv/app/fnd.toml", "srv/top.txt", "etc/fnd/fnd.toml", "etc/hosts"):
        (tmp_path / f).write_text("x")
    (tmp_path / "srv" / "sneaky").symlink_to(tmp_path / "srv" / "app")
    monkeypatch.setattr(sandbox_paths, "SYSTEM_READ_ONLY", ())
    monkeypatch.setattr(
        sandbox_paths, "interpreter_paths", lambda: [str(tmp_path / "srv/app/.venv")]
    )
    return tmp_path


def test_project_root_is_never_granted_only_functions_and_assets(tree: Path) -> None:
    project = str(tree / "srv/app")
    granted = readable([str(tree / "srv")], [project], project)
    assert granted == [
        str(tree / "srv/other"),
        str(tree / "srv/top.txt"),
        str(tree / "srv/app/.venv"),
        str(tree / "srv/app/functions"),
        str(tree / "srv/app/assets"),
    ]


def test_hidden_file_is_carved_out_of_a_directory(tree: Path) -> None:
    hidden = str(tree / "etc/fnd")
    granted = readable([str(tree / "etc")], [hidden], "")
    assert granted == [str(tree / "etc/hosts"), str(tree / "srv/app/.venv")]


def test_nothing_hidden_keeps_whole_directories(tree: Path) -> None:
    granted = readable([str(tree / "srv"), str(tree / "srv/other")], [], "")
    assert granted == [str(tree / "srv")]
    assert all(not os.path.islink(p) for p in granted)
