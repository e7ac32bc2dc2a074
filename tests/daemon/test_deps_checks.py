"""What `fnd deps` accepts from a project, before and after pip: requirements.txt line by line
(fnd.ctl.deps_requirements), and an installed folder against fnd's own module names in every
format a distribution can take (fnd.ctl.deps_checks), on crafted folders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from fnd.ctl.deps_checks import ShadowError, refuse_shadowing
from fnd.ctl.deps_folders import FolderError, open_dir
from fnd.ctl.deps_requirements import RequirementsError, Sources, check
from fnd.daemon.deps_folder import fnd_runtime_versions

pytestmark = pytest.mark.unit


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A project folder and a handle on it."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield tmp_path, fd
    finally:
        os.close(fd)


def test_requirements_by_name_with_markers_extras_and_hashes_are_rewritten_for_pip(
    folder: tuple[Path, int],
) -> None:
    root, fd = folder
    (root / "reqs").mkdir()
    (root / "reqs" / "base.txt").write_text("six==1.17.0 \\\n    --hash=sha256:" + "a" * 64
                                            + "\n-c pins.txt\n")
    (root / "reqs" / "pins.txt").write_text("urllib3<3  # a comment\n")
    text = ("# comment\nhumanize[extra] >=4 ; python_version >= '3.8'\n--require-hashes\n"
            "-r reqs/base.txt\n")
    checked = check(fd, text.encode())
    assert checked.requirements_file() == (
        "--require-hashes\n"
        'humanize[extra]>=4; python_version >= "3.8"\n'
        f"six==1.17.0 --hash=sha256:{'a' * 64}\n")
    assert checked.constraints_file() == "urllib3<3\n"
    assert [line.where for line in checked.requirements] == ["requirements.txt line 2",
                                                             "reqs/base.txt line 1"]


@pytest.mark.parametrize(("line", "says"), [
    ("--index-url=https://example.org/simple", "fnd deps --index-url URL"),
    ("--no-index", "fnd deps --find-links DIR"),
    ("-fhttps://example.org/", "fnd deps --find-links DIR"),
    ("--editable .", "--editable is not accepted"),
    ("--no-binary :all:", "fnd deps --allow-sdist"),
    ("--use-pep517", "--use-pep517 is not accepted"),
    ("six --global-option=x", "--global-option is not accepted after a requirement"),
    ("six --hash=md5:abc", "is not ALGORITHM:DIGEST"),
    ("./pkg", "is a local path"),
    ("pkg/sub", "is a local path"),
    ("six-1.0-py3-none-any.whl", "is a local path"),
    ("~/six.tar.gz", "is a local path"),
    ("six @ https://example.org/six.whl", "is a URL"),
    ("git+https://example.org/six.git", "is a URL"),
    ("-r /etc/passwd", "may only include a file inside the project"),
    ("-r https://example.org/r.txt", "may only include a file inside the project"),
    ("-r ${HOME}/r.txt", "may only include a file inside the project"),
    ("-r missing.txt", "-r missing.txt: no such file in the project"),
    ("-r requirements.txt", "includes loop"),
    ("six===", "is not a requirement fnd deps can read"),
])
def test_a_line_that_is_not_a_plain_requirement_is_refused_with_the_fix(
    folder: tuple[Path, int], line: str, says: str,
) -> None:
    _, fd = folder
    with pytest.raises(RequirementsError) as refused:
        check(fd, f"six\n{line}\n".encode())
    message = str(refused.value)
    assert message.startswith("requirements.txt line 2: "), message
    assert says in message and "\n" not in message


def test_the_operator_sources_reach_pip_and_only_wheels_unless_sdists_are_allowed() -> None:
    sources = Sources(index_url="https://mirror/simple", find_links=("/srv/wheels",),
                      extra_index_urls=("file:///srv/index",), trusted_hosts=("mirror",))
    assert sources.pip_args() == [
        "--index-url", "https://mirror/simple", "--extra-index-url", "file:///srv/index",
        "--find-links", "/srv/wheels", "--trusted-host", "mirror", "--only-binary", ":all:"]
    assert sources.local_paths() == ["/srv/index", "/srv/wheels"]
    assert "--only-binary" not in Sources(allow_sdist=True).pip_args()


def _egg_info(target: Path, name: str, top_level: str, installed: str = "") -> None:
    info = target / f"{name}-1.0.egg-info"
    info.mkdir()
    (info / "PKG-INFO").write_text(f"Metadata-Version: 1.1\nName: {name}\nVersion: 1.0\n")
    (info / "top_level.txt").write_text(top_level)
    if installed:
        (info / "installed-files.txt").write_text(installed)


def _refusal(target: Path) -> str:
    with pytest.raises(ShadowError) as refused:
        refuse_shadowing(target, fnd_runtime_versions())
    return str(refused.value)


def test_a_legacy_egg_info_install_bringing_an_fnd_module_is_refused(tmp_path: Path) -> None:
    _egg_info(tmp_path, "dotenv", "dotenv\n", "../dotenv/__init__.py\nPKG-INFO\n")
    (tmp_path / "dotenv").mkdir()
    (tmp_path / "dotenv" / "__init__.py").write_text("")
    assert _refusal(tmp_path).startswith(
        "dotenv 1.0 provides the module `dotenv`, which is fnd's own (from python-dotenv "
        f"{version('python-dotenv')})")


def test_an_egg_info_whose_files_name_an_fnd_module_is_refused(tmp_path: Path) -> None:
    _egg_info(tmp_path, "innocent", "innocent\n", "../msgpack/__init__.py\n")
    assert "innocent 1.0 provides the module `msgpack`" in _refusal(tmp_path)


@pytest.mark.parametrize(("entries", "shown"), [
    ({"dotenv.py": ""}, "(dotenv.py)"),
    ({"dotenv/__init__.py": ""}, "(dotenv/)"),
    ({"twilio/rest.py": ""}, "(twilio/)"),
    ({"structlog.cpython-311-x86_64-linux-gnu.so": ""},
     "(structlog.cpython-311-x86_64-linux-gnu.so)"),
    ({"x.pth": "import dotenv\n"}, "(x.pth line 1)"),
    ({"x.pth": "# comment\nfrom msgpack import packb\n"}, "(x.pth line 2)"),
    ({"x.pth": "extra\n", "extra/aiohttp/__init__.py": ""}, "(x.pth line 1)"),
    ({"fnd.py": ""}, "(fnd.py)"),
])
def test_a_top_level_entry_named_like_an_fnd_module_is_refused_whatever_installed_it(
    tmp_path: Path, entries: dict[str, str], shown: str,
) -> None:
    for name, text in entries.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    message = _refusal(tmp_path)
    assert message.startswith("the installed packages put `"), message
    assert shown in message and "which is fnd's own module" in message


def test_a_pth_line_pointing_outside_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.pth").write_text("/usr/lib/python3/dist-packages\n")
    assert "x.pth line 1 adds /usr/lib/python3/dist-packages to the path" in _refusal(tmp_path)


def test_a_folder_of_other_modules_passes(tmp_path: Path) -> None:
    _egg_info(tmp_path, "humanize", "humanize\n")
    for name in ("humanize/__init__.py", "six.py", "bin/tool", "x.pth", "a.pyd"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("import six\n" if name.endswith(".pth") else "")
    refuse_shadowing(tmp_path, fnd_runtime_versions())


def test_only_folders_fnd_makes_get_their_mode_set(folder: tuple[Path, int]) -> None:
    root, fd = folder
    old = os.umask(0o077)
    try:
        made = open_dir(fd, ".fnd", f"{root}/.fnd", create=True)
    finally:
        os.umask(old)
    assert made is not None
    os.close(made)
    assert (root / ".fnd").stat().st_mode & 0o777 == 0o755  # whatever the umask
    (root / ".fnd").chmod(0o700)  # made by someone else since
    with pytest.raises(FolderError, match=rf"^{root}/.fnd is not readable by worker uids .*"
                                          rf": chmod a\+rx {root}/.fnd$"):
        open_dir(fd, ".fnd", f"{root}/.fnd", create=True)
    assert (root / ".fnd").stat().st_mode & 0o777 == 0o700
    assert open_dir(fd, "absent", "absent", create=False) is None
