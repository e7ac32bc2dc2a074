"""`.fnd/deps` on disk, handled through directory handles only
(docs/handlers.md#python-packages).

`fnd deps` runs as root in a folder someone else may write, so no path below the project is
looked up by name from the top: ``.fnd`` and ``deps`` are opened ``O_NOFOLLOW`` relative to
the folder above, a symlink is refused (the folder it points to gets nothing: no chmod, no
``deps/``), and only folders fnd made itself get their mode set. After the build,
:func:`settle` walks the build folder by handle, refuses anything but folders and regular
files, and gives every entry to root with modes the worker uids can read but not change.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class FolderError(Exception):
    """A folder below the project is not one fnd deps will use; the message says why."""


def open_dir(parent_fd: int, name: str, shown: str, create: bool) -> int | None:
    """A handle on folder ``name`` in ``parent_fd``, made (mode 0755) when ``create`` and
    missing; None when missing and not ``create``. A symlink is refused, not followed."""
    made = False
    if create:
        try:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
            made = True
        except FileExistsError:
            pass
    try:
        fd = os.open(name, _DIR, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symlink" if _is_symlink(parent_fd, name) else "not a folder"
            raise FolderError(f"{shown} is {kind}: fnd deps does not follow it (it makes that "
                              "folder itself); remove it and run fnd deps again") from None
        raise
    if made:
        os.fchmod(fd, 0o755)  # whatever the umask: worker uids pass through it
    elif stat.S_IMODE(os.fstat(fd).st_mode) & 0o555 != 0o555:
        os.close(fd)
        raise FolderError(f"{shown} is not readable by worker uids (fnd deps changes the mode "
                          f"of folders it made only): chmod a+rx {shown}")
    return fd


def _is_symlink(parent_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def make_build_dir(deps_fd: int, prefix: str, owner: int | None) -> tuple[str, int]:
    """A new private folder ``<prefix><random>`` in ``deps_fd`` for pip to fill, owned by the
    build uid (when there is one); returns its name and a handle on it."""
    name = f"{prefix}{secrets.token_hex(6)}"
    os.mkdir(name, 0o700, dir_fd=deps_fd)
    fd = os.open(name, _DIR, dir_fd=deps_fd)
    os.fchmod(fd, 0o700)
    if owner is not None:
        os.fchown(fd, owner, owner)
    return name, fd


def settle(build_fd: int) -> None:
    """Give the finished build to root (when fnd deps runs as root): folders 0755, files 0644
    (0755 when executable), no setuid bits, nothing writable by the worker uids. Anything but
    a folder or a regular file is refused. Call it only once no process of the build uid is
    left."""
    _settle_one(build_fd, None, True)
    for dir_fd, name, st in _walk(build_fd):
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):
            raise FolderError(f"the build left {name!r}, which is not a regular file or a "
                              "folder; fnd deps installs only those")
        _settle_one(dir_fd, name, False, st)


def _settle_one(dir_fd: int, name: str | None, is_dir: bool,
                st: os.stat_result | None = None) -> None:
    as_root = os.geteuid() == 0  # otherwise pip ran as this user: its files are already ours
    if name is None:
        if as_root:
            os.fchown(dir_fd, 0, 0)
        os.fchmod(dir_fd, 0o755)
        return
    assert st is not None
    if as_root:
        os.chown(name, 0, 0, dir_fd=dir_fd, follow_symlinks=False)
    mode = 0o755 if is_dir or st.st_mode & 0o111 else 0o644
    os.chmod(name, mode, dir_fd=dir_fd)  # a regular file (checked), so no symlink to follow


def _walk(top_fd: int) -> Iterator[tuple[int, str, os.stat_result]]:
    """(folder handle, name, lstat) of every entry below ``top_fd``, never through a symlink;
    a sub-folder is settled before its entries are listed."""
    with os.scandir(top_fd) as entries:
        listed = [(entry.name, entry.stat(follow_symlinks=False)) for entry in entries]
    for name, st in listed:
        yield top_fd, name, st
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, _DIR, dir_fd=top_fd)
            try:
                _settle_one(top_fd, name, True, st)
                yield from _walk(fd)
            finally:
                os.close(fd)


def swap_in(deps_fd: int, build: str, final: str) -> None:
    """Rename the finished folder into place; a stale one of the same name goes aside first
    (two renames: a worker starting in between finds no folder and fails its imports)."""
    try:
        os.stat(final, dir_fd=deps_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(build, final, src_dir_fd=deps_fd, dst_dir_fd=deps_fd)
        return
    aside = f".old-{final[:12]}-{secrets.token_hex(6)}"
    os.rename(final, aside, src_dir_fd=deps_fd, dst_dir_fd=deps_fd)
    os.rename(build, final, src_dir_fd=deps_fd, dst_dir_fd=deps_fd)
    remove(deps_fd, aside)


def remove(parent_fd: int, name: str) -> None:
    """Remove an entry of ``parent_fd`` (a whole folder, never through a symlink)."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent_fd)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent_fd)


def entries(parent_fd: int) -> list[str]:
    with os.scandir(parent_fd) as found:
        return sorted(entry.name for entry in found)
