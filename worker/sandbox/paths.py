"""Which paths a worker may read: the interpreter, the venv, /usr, /etc and the project's
functions/ and assets/ — never the project root (.env, fnd.toml) or another worker's scratch.

Landlock grants whole subtrees, so a hidden path under a readable one is handled by granting
the readable directory's other entries one by one instead of the directory itself.
"""

from __future__ import annotations

import os
import site
import sys

from fnd import protocol, worker

SYSTEM_READ_ONLY = ("/usr", "/etc", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
DEVICES_READ_ONLY = ("/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
DEVICES_READ_WRITE = ("/dev/null",)
_MAX_EXPANDED = 4096


def interpreter_paths() -> list[str]:
    """The interpreter, its prefixes, site-packages and fnd's own packages."""
    paths = [
        os.path.dirname(os.path.realpath(sys.executable)),
        sys.prefix,
        sys.exec_prefix,
        sys.base_prefix,
        sys.base_exec_prefix,
    ]
    paths += site.getsitepackages()
    paths += [p for p in sys.path if p and os.path.isabs(p) and _under_any(p, paths)]
    for package in (worker, protocol):
        paths += [str(p) for p in package.__path__ if os.path.isdir(str(p))]
    return paths


def project_paths(project_dir: str) -> list[str]:
    if not project_dir:
        return []
    return [os.path.join(project_dir, "functions"), os.path.join(project_dir, "assets")]


def readable(extra: list[str], hidden: list[str], project_dir: str) -> list[str]:
    """Every read-only path to grant, with hidden paths carved out.

    A wanted path that contains a hidden path is replaced by its other entries (recursively);
    a wanted path inside a hidden one is still granted (a venv inside the project dir), but
    nothing found while carving is, even through a symlink.
    """
    wanted = [*SYSTEM_READ_ONLY, *interpreter_paths(), *extra]
    real_hidden = [os.path.realpath(h) for h in hidden if h]
    granted: list[str] = []
    for path in wanted:
        _expand(os.path.realpath(path), real_hidden, granted, explicit=True)
    granted = _outermost(granted)
    return granted + [p for p in project_paths(project_dir) if os.path.exists(p)]


def _expand(path: str, hidden: list[str], out: list[str], explicit: bool = False) -> None:
    if len(out) > _MAX_EXPANDED or not os.path.exists(path):
        return
    if path in hidden or (not explicit and _under_any(path, hidden)):
        return
    if not any(_is_under(h, path) and h != path for h in hidden):
        out.append(path)
        return
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in sorted(names):
        _expand(os.path.realpath(os.path.join(path, name)), hidden, out)


def _is_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _under_any(path: str, parents: list[str]) -> bool:
    return any(_is_under(path, p) for p in parents)


def _outermost(paths: list[str]) -> list[str]:
    result: list[str] = []
    for path in sorted(set(paths), key=len):
        if not _under_any(path, result):
            result.append(path)
    return result
