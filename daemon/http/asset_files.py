"""Open the file an asset route recorded at scan time, and nothing else.

Routes keep the real path of each asset and the device and inode it had when the project was
scanned. Serving reopens it through :func:`fnd.daemon.http.safe_open.open_beneath` from a handle on
the project folder taken once per route table: no symlink is followed at any component (a
link swapped in after the scan is refused, wherever it points), and the opened file must be
the very file the scan saw. A file replaced by a new one, even a regular file, is refused
too: deploying new assets is a reload, which scans again.

Each refusal carries a one-line reason that the client gets with its 404 and the log keeps.
"""

from __future__ import annotations

import errno
import os
import stat
import weakref
from dataclasses import dataclass
from typing import BinaryIO

from fnd.daemon.http.safe_open import open_beneath, open_directory
from fnd.daemon.project import Route


class AssetGone(Exception):
    """The route's file cannot be served any more; ``str()`` is the one-line reason."""


@dataclass(frozen=True, slots=True)
class OpenedAsset:
    file: BinaryIO  # the caller closes it
    stat: os.stat_result  # fstat of that very file


_WHY = {
    errno.ELOOP: "a symlink now stands in its path",
    errno.EXDEV: "its path now leads out of the project folder",
    errno.ENOENT: "the file is gone",
    errno.ENOTDIR: "a folder in its path is no longer a folder",
}


class AssetFiles:
    """A handle on one scanned project's folder; opens its asset routes safely.

    Built with each route table and dropped with it; the handle is closed when the last
    request using it lets go, so a reload never pulls it from under an open in progress.
    """

    def __init__(self, root: str) -> None:
        self._prefix = root.rstrip("/") + "/"  # routes hold absolute real paths under root
        self._fd: int | None = None
        self._error = ""
        try:
            self._fd = open_directory(root)
        except OSError as exc:
            self._error = f"the project folder cannot be opened: {exc.strerror}"
        else:
            weakref.finalize(self, os.close, self._fd)

    def open(self, route: Route) -> OpenedAsset:
        """The route's file, open for reading; AssetGone when it is not the scanned file.

        Blocking (a few syscalls): call it from an executor thread.
        """
        if self._fd is None:
            raise AssetGone(f"asset {route.path} cannot be served: {self._error}")
        name = str(route.file)
        if not name.startswith(self._prefix):  # the scan only makes routes under the root
            raise AssetGone(_reason(route, "it is not under the project folder"))
        try:
            fd = open_beneath(self._fd, name[len(self._prefix):])
        except (OSError, ValueError) as exc:
            why = _WHY.get(getattr(exc, "errno", None) or 0) or f"it cannot be opened: {exc}"
            raise AssetGone(_reason(route, why)) from None
        try:
            st = os.fstat(fd)
            # Type first: a freed inode number can be reused at once, even by a FIFO.
            if not stat.S_ISREG(st.st_mode):
                raise AssetGone(_reason(route, "something not a regular file replaced it"))
            if (st.st_dev, st.st_ino) != (route.device, route.inode):
                raise AssetGone(_reason(route, "another file replaced it"))
            return OpenedAsset(os.fdopen(fd, "rb", buffering=0), st)
        except BaseException:
            os.close(fd)
            raise


def _reason(route: Route, why: str) -> str:
    return (f"asset {route.path} changed on disk since the project was scanned: {why}; "
            "reload fnd to serve it")
