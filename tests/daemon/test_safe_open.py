"""open_beneath (openat2 and the component walk) and AssetFiles' identity check, on real files."""

from __future__ import annotations

import errno
import os
import platform
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fnd.daemon.http import safe_open
from fnd.daemon.http.asset_files import AssetFiles, AssetGone
from fnd.daemon.http.safe_open import open_beneath, open_directory
from fnd.daemon.project import scan_project

pytestmark = pytest.mark.unit


@pytest.fixture(params=["openat2", "walk"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test through openat2 and through the fallback walk used without it."""
    if request.param == "walk":
        monkeypatch.setattr(safe_open._openat2, "usable", False)
    elif not safe_open._openat2.usable:
        pytest.skip("no openat2 on this machine")
    return str(request.param)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """root/a/b/file.txt, a secret outside root, and a handle on root."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "file.txt").write_text("inside\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    (tmp_path / "elsewhere" / "b").mkdir(parents=True)
    (tmp_path / "elsewhere" / "b" / "file.txt").write_text("secret\n")
    fd = open_directory(str(root))
    try:
        yield root, fd
    finally:
        os.close(fd)


def read(fd: int) -> bytes:
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


def errno_of(fd: int, relpath: str) -> int:
    with pytest.raises(OSError) as caught:
        os.close(open_beneath(fd, relpath))
    return caught.value.errno or 0


def test_plain_file_opens(way: str, tree: tuple[Path, int]) -> None:
    _, fd = tree
    assert read(open_beneath(fd, "a/b/file.txt")) == b"inside\n"


def test_symlinked_file_is_refused(way: str, tree: tuple[Path, int]) -> None:
    root, fd = tree
    os.symlink(root.parent / "secret.txt", root / "a" / "b" / "out.txt")
    os.symlink("file.txt", root / "a" / "b" / "in.txt")  # even one that stays inside
    assert errno_of(fd, "a/b/out.txt") == errno.ELOOP
    assert errno_of(fd, "a/b/in.txt") == errno.ELOOP


def test_symlinked_folder_is_refused(way: str, tree: tuple[Path, int]) -> None:
    root, fd = tree
    (root / "a" / "b").rename(root / "a" / "old")
    os.symlink(root.parent / "elsewhere" / "b", root / "a" / "b")
    assert errno_of(fd, "a/b/file.txt") == errno.ELOOP
    (root / "a").rename(root / "gone")
    os.symlink(root / "gone", root / "a")  # the first component too
    assert errno_of(fd, "a/old/file.txt") == errno.ELOOP


def test_missing_and_not_a_folder(way: str, tree: tuple[Path, int]) -> None:
    root, fd = tree
    assert errno_of(fd, "a/b/nope.txt") == errno.ENOENT
    assert errno_of(fd, "a/b/file.txt/x") == errno.ENOTDIR


@pytest.mark.parametrize("relpath", ["/etc/passwd", "../secret.txt", "a/../../secret.txt",
                                     "a/./b/file.txt", "", "a//b/file.txt"])
def test_paths_that_are_not_plain_relative_paths(tree: tuple[Path, int], relpath: str) -> None:
    _, fd = tree
    with pytest.raises(ValueError):
        open_beneath(fd, relpath)


@pytest.mark.timeout(20)
def test_a_fifo_does_not_hang_the_open(way: str, tree: tuple[Path, int]) -> None:
    root, fd = tree
    os.mkfifo(root / "a" / "b" / "pipe.txt")
    opened = open_beneath(fd, "a/b/pipe.txt")  # no writer: a blocking open would wait forever
    try:
        assert stat.S_ISFIFO(os.fstat(opened).st_mode)
    finally:
        os.close(opened)


def test_openat2_is_used_on_a_recent_kernel(tree: tuple[Path, int]) -> None:
    release = tuple(int(x) for x in platform.release().split(".")[:2])
    if platform.machine() not in ("x86_64", "aarch64") or release < (5, 6):
        pytest.skip("openat2 needs Linux 5.6 on x86_64 or aarch64")
    _, fd = tree
    read(open_beneath(fd, "a/b/file.txt"))
    assert safe_open._openat2.usable


# -- AssetFiles: the route's own file or a one-line reason ------------------------------

def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "assets" / "img").mkdir(parents=True)
    (root / "assets" / "img" / "logo.txt").write_text("logo\n")
    (root / "README.md").write_text("readme\n")
    os.symlink("../README.md", root / "assets" / "readme.txt")  # allowed at scan time
    (tmp_path / "secret.txt").write_text("secret\n")
    return root


def test_asset_files_serve_the_scanned_file(way: str, tmp_path: Path) -> None:
    scanned = scan_project(project(tmp_path))
    files = AssetFiles(str(scanned.root))
    with files.open(scanned.assets["/img/logo.txt"]).file as f:
        assert f.read() == b"logo\n"
    # A symlink the scan accepted is served through its recorded real path.
    with files.open(scanned.assets["/readme.txt"]).file as f:
        assert f.read() == b"readme\n"


def test_asset_files_refuse_what_changed(way: str, tmp_path: Path) -> None:
    root = project(tmp_path)
    scanned = scan_project(root)
    files = AssetFiles(str(scanned.root))
    logo, readme = scanned.assets["/img/logo.txt"], scanned.assets["/readme.txt"]

    (root / "README.md").unlink()
    os.symlink(tmp_path / "secret.txt", root / "README.md")
    with pytest.raises(AssetGone, match="a symlink now stands in its path"):
        files.open(readme)

    img = root / "assets" / "img"
    img.rename(root / "assets" / "old")
    os.symlink(root / "assets" / "old", img)  # same file, reached through a new link
    with pytest.raises(AssetGone, match="a symlink now stands in its path"):
        files.open(logo)
    img.unlink()
    (root / "assets" / "old").rename(img)
    files.open(logo).file.close()  # back in place: served again

    # A regular file, but another inode: written aside and renamed over, as deploys do.
    (img / "new.txt").write_text("new logo\n")
    (img / "new.txt").rename(img / "logo.txt")
    with pytest.raises(AssetGone, match=r"another file replaced it; reload fnd to serve it"):
        files.open(logo)
    (img / "logo.txt").unlink()
    with pytest.raises(AssetGone, match="the file is gone"):
        files.open(logo)
    os.mkfifo(img / "logo.txt")
    with pytest.raises(AssetGone, match="something not a regular file replaced it"):
        files.open(logo)


def test_asset_files_without_a_project_folder(tmp_path: Path) -> None:
    scanned = scan_project(project(tmp_path))
    files = AssetFiles(str(tmp_path / "vanished"))
    with pytest.raises(AssetGone, match="project folder cannot be opened"):
        files.open(scanned.assets["/img/logo.txt"])
