"""A project's own Python packages: which ``.fnd/deps/<hash>`` folder its requirements.txt
needs, and whether that folder is installed (docs/handlers.md#python-packages).

``fnd deps PROJECT`` (:mod:`fnd.ctl.deps`) installs requirements.txt into
``PROJECT/.fnd/deps/<hash>``, where the hash covers the file's bytes and the interpreter, so a
changed file or a new Python needs a new folder. The daemon only reads: at ``fnd serve`` and at
each reload it asks :func:`installed_folder`, and a project whose folder is missing (or was
made against other versions of fnd's own packages) is refused with the command that fixes it.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import stat
import sys
import sysconfig
from pathlib import Path

REQUIREMENTS = "requirements.txt"
DEPS_DIR = Path(".fnd") / "deps"
MANIFEST = ".fnd-deps.json"  # written into the folder by fnd deps, last thing before the rename

MAX_READ = 1 << 20  # requirements.txt or a manifest larger than this is refused (as fnd deps)
_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class DepsMismatch(Exception):
    """The project's requirements.txt has no matching installed folder; says how to fix it."""


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Python_Dotenv`` → ``python-dotenv``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def interpreter_tag() -> str:
    """What compiled packages depend on: implementation, version, ABI and platform."""
    return (f"{sys.implementation.name}-{platform.python_version()}{sys.abiflags}-"
            f"{sysconfig.get_platform()}")


def deps_hash(requirements: bytes) -> str:
    return hashlib.sha256(requirements + b"\0" + interpreter_tag().encode()).hexdigest()


def read_regular(path: Path) -> bytes:
    """A regular file's bytes, never through a symlink and at most MAX_READ of them: the
    daemon reads these as root, and whoever writes the project chooses what they are."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_size > MAX_READ:
            raise OSError(errno.EFBIG, f"larger than {MAX_READ} bytes")
        data = bytearray()
        while len(data) <= MAX_READ and (chunk := os.read(fd, MAX_READ + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_READ:
        raise OSError(errno.EFBIG, f"larger than {MAX_READ} bytes")
    return bytes(data)


def _why(exc: OSError) -> str:
    return ("a symlink (fnd does not follow symlinks in a project)" if exc.errno == errno.ELOOP
            else str(exc.strerror))


def wanted_folder(root: Path) -> Path | None:
    """``root/.fnd/deps/<hash>`` for the project's requirements.txt; None when it has none."""
    try:
        data = read_regular(root / REQUIREMENTS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DepsMismatch(f"{root / REQUIREMENTS} cannot be read: {_why(exc)}") from None
    return root / DEPS_DIR / deps_hash(data)


def _refuse_links(root: Path, folder: Path) -> None:
    """Workers are granted the deps folder: none of .fnd, .fnd/deps, <hash> may be a symlink."""
    for path in (root / DEPS_DIR.parent, root / DEPS_DIR, folder):
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise DepsMismatch(f"{path} is a symlink: fnd does not follow symlinks in a "
                                   f"project; remove it and run: fnd deps {root}")
        except FileNotFoundError:
            return  # missing: said below, with the command that makes it


def fnd_runtime_versions() -> dict[str, str]:
    """fnd and every distribution it runs on (its dependencies, theirs, and so on; extras
    left out), by normalized name, with the installed versions."""
    found: dict[str, str] = {}
    todo = ["fnd"]
    while todo:
        name = normalize(todo.pop())
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a dependency whose marker does not apply here (not installed)
        found[name] = dist.version
        for requirement in dist.requires or []:
            if "extra" in requirement.partition(";")[2]:
                continue
            match = _NAME.match(requirement)
            if match:
                todo.append(match.group(1))
    return found


def stale_shared(manifest: dict[str, object], runtime: dict[str, str]) -> list[str]:
    """Packages the folder leaves to fnd's copy whose version in fnd's environment changed
    since it was installed ("twilio 9.1.0 (now 9.2.0)")."""
    shared = manifest.get("shared")
    if not isinstance(shared, dict):
        return ["(no record of fnd's packages)"]
    return [f"{name} {version} (now {runtime.get(name, 'not installed')})"
            for name, version in sorted(shared.items()) if runtime.get(name) != version]


def read_manifest(folder: Path) -> dict[str, object] | None:
    try:
        data = json.loads(read_regular(folder / MANIFEST))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def installed_folder(root: Path) -> Path | None:
    """The folder workers import the project's packages from; None when the project has no
    requirements.txt. Raises DepsMismatch (with the command to run) when it is not installed
    or was made against other versions of fnd's own packages."""
    folder = wanted_folder(root)
    if folder is None:
        return None
    _refuse_links(root, folder)
    fix = f"run: fnd deps {root}"
    shown = f"{DEPS_DIR}/{folder.name}"
    manifest = read_manifest(folder)
    if manifest is None:
        reason = "missing" if not folder.exists() else "incomplete"
        raise DepsMismatch(f"{root / REQUIREMENTS} is not installed ({shown} is {reason}); {fix}")
    stale = stale_shared(manifest, fnd_runtime_versions())
    if stale:
        raise DepsMismatch(f"{root / REQUIREMENTS} was installed against other versions of "
                           f"fnd's own packages: {', '.join(stale)}; {fix}")
    return folder
