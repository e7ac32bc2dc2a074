"""`fnd invoke`'s warm daemon, the parts that start nothing: which changes of a project reload
it (functions, assets) and which restart it (fnd.toml, .env, requirements, deps folders), and
the per-user, per-project state folder."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from fnd.author import warm

pytestmark = pytest.mark.unit


def _project(root: Path) -> Path:
    (root / "functions").mkdir(parents=True)
    (root / "functions" / "a.py").write_text("def handler(c, e, cb): cb(None, 1)\n")
    (root / "assets").mkdir()
    (root / "assets" / "x.txt").write_text("x")
    (root / ".env").write_text("A=1\n")
    return root


def _bump(path: Path, text: str | None = None) -> None:
    if text is not None:
        path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_code_edits_change_the_code_digest_only(tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    config, code = warm.fingerprint(project)
    assert warm.fingerprint(project) == (config, code)  # stable when nothing changed
    _bump(project / "functions" / "a.py")
    config2, code2 = warm.fingerprint(project)
    assert config2 == config and code2 != code
    (project / "functions" / "b.py").write_text("")
    assert warm.fingerprint(project)[1] != code2
    (project / "assets" / "x.txt").unlink()
    assert warm.fingerprint(project)[0] == config


@pytest.mark.parametrize("name", ["fnd.toml", ".env", "requirements.txt"])
def test_config_edits_change_the_config_digest(tmp_path: Path, name: str) -> None:
    project = _project(tmp_path / "p")
    config, code = warm.fingerprint(project)
    _bump(project / name, "B=2\n")
    assert warm.fingerprint(project) == (warm.fingerprint(project)[0], code)
    assert warm.fingerprint(project)[0] != config


def test_deps_folders_count_and_caches_do_not(tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    before = warm.fingerprint(project)
    (project / "functions" / "__pycache__").mkdir()
    (project / "functions" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"x")
    (project / ".git").mkdir()
    (project / ".git" / "index").write_bytes(b"x")
    assert warm.fingerprint(project) == before
    (project / ".fnd" / "deps" / "abc123").mkdir(parents=True)
    assert warm.fingerprint(project)[0] != before[0]


def test_one_private_state_folder_per_project(tmp_path: Path) -> None:
    a, b = _project(tmp_path / "a"), _project(tmp_path / "b")
    folder, other = warm.state_folder(a), warm.state_folder(b)
    try:
        assert folder == warm.state_folder(a) and folder != other
        assert folder.parent == Path(f"/tmp/fnd-invoke-{os.geteuid()}")
        assert folder.parent.stat().st_mode & 0o077 == 0
        assert not warm.stop(folder)  # nothing runs there: stopping says so and does nothing
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(other, ignore_errors=True)


def test_stop_removes_the_folder_and_a_waiting_call_takes_the_new_lock(tmp_path: Path) -> None:
    folder = warm.state_folder(_project(tmp_path / "p"))
    seen: list[bool] = []

    def waiter() -> None:
        with warm.locked(folder):
            seen.append((folder / "lock").exists())

    try:
        with warm.locked(folder):
            thread = threading.Thread(target=waiter)
            thread.start()
            warm.stop(folder)
            warm.remove(folder)  # as `fnd invoke --stop`, with the lock held
            assert not folder.exists()
        thread.join(10)
        assert seen == [True]  # it locked the new file, not the removed one
    finally:
        shutil.rmtree(folder, ignore_errors=True)
