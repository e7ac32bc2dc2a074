"""`fnd deps` against real pip: the folder's name, idempotence, modes under umask 077, pruning,
and the refusal of another version of one of fnd's own packages; the daemon's side check.
The packages these tests make come from a folder given as the operator's --find-links."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from fnd.ctl.deps import DepsError, install, prune
from fnd.ctl.deps_requirements import Sources
from fnd.daemon.deps_folder import (
    DEPS_DIR,
    MANIFEST,
    DepsMismatch,
    deps_hash,
    installed_folder,
    interpreter_tag,
    wanted_folder,
)
from fnd.daemon.sandbox.read_check import check_readable_for_uid

pytestmark = pytest.mark.slow

# six: tiny and not one of fnd's; python-dotenv: one of fnd's, so it must be left to fnd's copy.
REQUIREMENTS = "six\npython-dotenv\n"


def _project() -> Path:
    top = Path(tempfile.mkdtemp(prefix="fnd-deps-test-", dir="/tmp"))
    top.chmod(0o755)
    project = top / "project"
    (project / "functions").mkdir(parents=True)
    (project / "requirements.txt").write_text(REQUIREMENTS)
    for path in (project, project / "functions"):
        path.chmod(0o755)
    (project / "requirements.txt").chmod(0o644)
    return project


@pytest.fixture(scope="module")
def installed() -> Iterator[tuple[Path, list[str]]]:
    """A project after one `fnd deps` run under umask 077, and what it said."""
    project = _project()
    said: list[str] = []
    old = os.umask(0o077)
    try:
        install(project, said.append)
    finally:
        os.umask(old)
    yield project, said
    shutil.rmtree(project.parent, ignore_errors=True)


def _folder(project: Path) -> Path:
    folder = wanted_folder(project)
    assert folder is not None
    return folder


def test_the_folder_is_named_by_the_requirements_and_the_interpreter() -> None:
    data = REQUIREMENTS.encode()
    assert deps_hash(data) == deps_hash(data)
    assert deps_hash(data) != deps_hash(data + b"humanize\n")
    assert sys.implementation.name in interpreter_tag()
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in interpreter_tag()


def test_install_puts_the_project_packages_there_and_leaves_fnd_packages_to_fnd(
    installed: tuple[Path, list[str]],
) -> None:
    project, said = installed
    folder = _folder(project)
    assert folder.name == deps_hash(REQUIREMENTS.encode())
    assert said[-2].startswith(f"installed: {DEPS_DIR}/{folder.name} (six ")
    assert said[-1] == f"  served by fnd's own copy: python-dotenv {version('python-dotenv')}"
    assert (folder / "six.py").is_file()
    assert not (folder / "dotenv").exists() and not list(folder.glob("python_dotenv*"))
    assert not (folder / "bin" / "dotenv").exists()  # its script went with it
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["shared"] == {"python-dotenv": version("python-dotenv")}
    assert set(manifest["installed"]) == {"six"}
    assert installed_folder(project) == folder
    assert [p.name for p in (project / DEPS_DIR).iterdir()] == [folder.name]  # no leftovers


def test_a_second_run_installs_nothing_and_says_so(installed: tuple[Path, list[str]]) -> None:
    project, _ = installed
    folder = _folder(project)
    before = folder.stat()
    said: list[str] = []
    install(project, said.append)
    assert said == [f"up to date: {DEPS_DIR}/{folder.name}"]
    after = folder.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == \
        (before.st_ino, before.st_mtime_ns, before.st_ctime_ns)


def test_under_umask_077_everything_is_readable_by_another_uid(
    installed: tuple[Path, list[str]],
) -> None:
    project, _ = installed
    folder = _folder(project)
    paths = [project / ".fnd", project / DEPS_DIR, folder, *folder.rglob("*")]
    for path in paths:
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode):
            assert mode & 0o555 == 0o555, f"{path}: {stat.filemode(mode)}"
        elif stat.S_ISREG(mode):
            assert mode & 0o444 == 0o444, f"{path}: {stat.filemode(mode)}"
    if os.geteuid() == 0:  # and the kernel agrees, as a worker uid
        assert check_readable_for_uid(61000, 61000, [str(p) for p in paths]) == []


def test_prune_removes_what_the_current_requirements_do_not_use(
    installed: tuple[Path, list[str]],
) -> None:
    project, _ = installed
    top = project / DEPS_DIR
    stale = top / deps_hash(b"humanize\n")
    (stale / "humanize").mkdir(parents=True)
    (top / ".tmp-0123456789ab-xyz").mkdir()  # an interrupted run's leftover
    said: list[str] = []
    prune(project, said.append)
    assert sorted(said) == [f"removed: {DEPS_DIR}/.tmp-0123456789ab-xyz",
                            f"removed: {DEPS_DIR}/{stale.name}"]
    assert [p.name for p in top.iterdir()] == [_folder(project).name]
    said.clear()
    prune(project, said.append)
    assert said == ["nothing to prune"]


def test_a_changed_requirements_file_is_a_mismatch_naming_the_command(
    installed: tuple[Path, list[str]],
) -> None:
    project, _ = installed
    other = _project()
    try:
        (other / "requirements.txt").write_text(REQUIREMENTS + "humanize\n")
        with pytest.raises(DepsMismatch, match=f"; run: fnd deps {other}$"):
            installed_folder(other)
        (other / "requirements.txt").unlink()
        assert installed_folder(other) is None  # no requirements.txt: nothing needed
    finally:
        shutil.rmtree(other.parent)


def test_another_version_of_fnd_twilio_is_refused_before_any_download() -> None:
    ours = version("twilio")
    theirs = "8.0.0" if ours != "8.0.0" else "8.1.0"
    project = _project()
    try:
        (project / "requirements.txt").write_text(f"six\ntwilio=={theirs}  # pinned\n")
        with pytest.raises(DepsError) as refused:
            install(project, lambda _line: None)
        assert f"twilio=={theirs}" in str(refused.value)
        assert f"fnd itself runs on twilio {ours}" in str(refused.value)
        assert not (project / ".fnd").exists()  # refused before a build folder, or pip
        # The command: exit 1 and one line.
        done = subprocess.run([sys.executable, "-P", "-m", "fnd.cli", "deps", str(project)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        [line] = done.stderr.splitlines()
        assert line.startswith("fnd deps: requirements.txt asks for twilio==")
    finally:
        shutil.rmtree(project.parent)


def test_a_folder_made_against_other_versions_of_fnd_packages_is_stale_and_rebuilt(
    installed: tuple[Path, list[str]],
) -> None:
    project, _ = installed
    folder = _folder(project)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["shared"]["python-dotenv"] = "0.0.1"
    (folder / MANIFEST).write_text(json.dumps(manifest))
    ours = version("python-dotenv")
    with pytest.raises(DepsMismatch, match=f"python-dotenv 0.0.1 \\(now {ours}\\)"):
        installed_folder(project)
    said: list[str] = []
    install(project, said.append)  # rebuilds in place, under the same name
    assert said[-2].startswith(f"installed: {DEPS_DIR}/{folder.name}")
    assert installed_folder(project) == folder
    assert [p.name for p in (project / DEPS_DIR).iterdir()] == [folder.name]


def _wheelhouse(project: Path) -> Path:
    """A folder of packages beside the project (the operator's --find-links)."""
    folder = project.parent / "wheels"
    folder.mkdir(mode=0o755, exist_ok=True)
    return folder


def _wheel(folder: Path, name: str, requires: str = "", module: str = "") -> Path:
    """A minimal pure-Python wheel of ``name`` 1.0, with the module ``module`` (default: the
    name) and one dependency ``requires``."""
    depends = f"Requires-Dist: {requires}\n" if requires else ""
    files = {
        f"{module or name}/__init__.py": "X = 1\n",
        f"{name}-1.0.dist-info/METADATA":
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{depends}",
        f"{name}-1.0.dist-info/WHEEL":
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(text: str) -> str:
        raw = hashlib.sha256(text.encode()).digest()
        return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    record = "".join(f"{n},{digest(c)},{len(c.encode())}\n" for n, c in files.items())
    record += f"{name}-1.0.dist-info/RECORD,,\n"
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
        archive.writestr(f"{name}-1.0.dist-info/RECORD", record)
    return wheel


def test_a_dependency_needing_another_version_of_an_fnd_package_fails_in_pip_and_says_why(
) -> None:
    project = _project()
    try:
        # Not pinned in requirements.txt itself: only pip's resolution meets fnd's version.
        _wheel(_wheelhouse(project), "fnd_test_needs_old_msgpack", "msgpack<1")
        (project / "requirements.txt").write_text("fnd_test_needs_old_msgpack\n")
        with pytest.raises(DepsError) as refused:
            install(project, lambda _line: None, Sources(find_links=(str(_wheelhouse(project)),)))
        message = str(refused.value)
        assert "a requirement needs another version of a package fnd itself runs on" in message
        assert f"(constraint) msgpack=={version('msgpack')}" in message  # pip's words, shown
        assert [p.name for p in (project / DEPS_DIR).iterdir()] == []  # nothing left behind
    finally:
        shutil.rmtree(project.parent)


def test_a_package_bringing_a_module_of_fnd_under_another_name_is_refused() -> None:
    project = _project()
    try:
        _wheel(_wheelhouse(project), "fnd_test_not_dotenv", module="dotenv")
        (project / "requirements.txt").write_text("fnd_test_not_dotenv\n")
        with pytest.raises(DepsError) as refused:
            install(project, lambda _line: None, Sources(find_links=(str(_wheelhouse(project)),)))
        assert str(refused.value).startswith(
            "fnd_test_not_dotenv 1.0 provides the module `dotenv`, which is fnd's own (from "
            f"python-dotenv {version('python-dotenv')})")
        assert [p.name for p in (project / DEPS_DIR).iterdir()] == []
    finally:
        shutil.rmtree(project.parent)


def test_a_hash_pinned_requirement_installs_and_a_wrong_hash_is_refused_by_pip() -> None:
    project = _project()
    try:
        wheel = _wheel(_wheelhouse(project), "fnd_test_hashed")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        sources = Sources(find_links=(str(_wheelhouse(project)),))
        wrong = "0" * 64
        (project / "requirements.txt").write_text(f"fnd_test_hashed==1.0 --hash=sha256:{wrong}\n")
        with pytest.raises(DepsError, match="THESE PACKAGES DO NOT MATCH THE HASHES"):
            install(project, lambda _line: None, sources)
        (project / "requirements.txt").write_text(
            f"fnd_test_hashed==1.0 \\\n    --hash=sha256:{digest}\n")
        said: list[str] = []
        install(project, said.append, sources)
        assert said[-1].endswith("(fnd-test-hashed 1.0)")
        assert (_folder(project) / "fnd_test_hashed" / "__init__.py").is_file()
    finally:
        shutil.rmtree(project.parent)
