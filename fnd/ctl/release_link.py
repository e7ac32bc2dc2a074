"""The `project` symlink that `fnd deploy` switches between release folders.

ROOT/LINK (``/srv/fnd/project``, or ``/srv/fnd/NAME`` for ``fnd@NAME``) points at the release
being served; ROOT/LINK.previous points at the one it replaced, for ``fnd deploy --rollback``.
A switch writes a new symlink under a temporary name and renames it over the link: rename(2)
replaces a symlink atomically, so a reader (the daemon at start or reload) sees the old
target or the new one, never none. rename(2) also refuses to put a symlink over a directory,
so a real folder at LINK is never moved into or replaced.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = "/srv/fnd"
PREVIOUS_SUFFIX = ".previous"


class LinkError(Exception):
    """The link cannot be switched as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ReleaseLink:
    root: Path
    name: str

    @property
    def path(self) -> Path:
        return self.root / self.name

    @property
    def previous_path(self) -> Path:
        return self.root / (self.name + PREVIOUS_SUFFIX)

    def current(self) -> str | None:
        """The link's target as written, None when there is no link yet; refuses anything
        at LINK that is not a symlink."""
        return self._read(self.path, current=True)

    def previous(self) -> str | None:
        """The recorded previous release (the target as written), None when none is."""
        return self._read(self.previous_path, current=False)

    def resolve(self, target: str) -> Path:
        """A target as written (maybe relative to ROOT) as an absolute path, symlinks
        resolved: what the daemon serves when the link points there."""
        return Path(os.path.realpath(self.root / target))

    def switch(self, target: str) -> None:
        """Point LINK at target, atomically."""
        self._replace(self.path, target)

    def record_previous(self, target: str) -> None:
        self._replace(self.previous_path, target)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One deploy at a time in ROOT: a second one waits for the first to finish."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise LinkError(f"cannot open {self.root}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self, path: Path, current: bool) -> str | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LinkError(f"cannot read {path}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            return os.readlink(path)
        if current and stat.S_ISDIR(st.st_mode):
            raise LinkError(_folder_message(self.root, self.name))
        raise LinkError(f"{path} is not a symlink: fnd deploy keeps a symlink there; "
                        f"move it away (it is not a release fnd made)")

    def _replace(self, path: Path, target: str) -> None:
        temporary = self.root / f".{path.name}.deploy-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # left by a deploy of the same pid that was killed
        try:
            os.symlink(target, temporary)
            os.rename(temporary, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise LinkError(_folder_message(self.root, self.name)) from None
            raise LinkError(f"cannot switch {path} to {target}: {exc.strerror}") from None


def _folder_message(root: Path, name: str) -> str:
    link = root / name
    first = root / "releases" / f"{name}-first"
    options = "" if str(root) == DEFAULT_ROOT else f" --root {root}"
    instance = "" if name == "project" else f" {name}"
    return (f"{link} is a folder, not a symlink: fnd deploy switches a symlink and never "
            f"replaces a folder. Make it a release once: mkdir -p {root}/releases && "
            f"mv {link} {first} && fnd deploy{options} {first}{instance}")
