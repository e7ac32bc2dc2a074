"""`fnd deps PROJECT`: install the project's requirements.txt into ``.fnd/deps/<hash>`` with pip.

The folder is built next to where it goes (same filesystem) and renamed into place, so a
daemon never sees half of it. Packages fnd itself runs on are never installed twice: the
worker has them imported before the project's folder is on its path, so a second copy at
another version would be half used. A requirement asking for another version of one of them
is refused; one that resolves to fnd's own version is removed from the folder (fnd's copy
serves). Everything is made readable by the worker uids whatever the umask.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from email.parser import HeaderParser
from pathlib import Path

from fnd.daemon.deps import (
    DEPS_DIR,
    MANIFEST,
    REQUIREMENTS,
    deps_hash,
    fnd_runtime_versions,
    interpreter_tag,
    normalize,
    read_manifest,
    stale_shared,
)

_PIP_TAIL = 15  # lines of pip's output shown when it fails

Say = Callable[[str], None]


class DepsError(Exception):
    """fnd deps cannot do its job; the message is the one line the user sees."""


def _root(project: Path) -> Path:
    try:
        root = project.resolve(strict=True)
    except OSError as exc:
        raise DepsError(f"project folder {project} cannot be read: {exc.strerror}") from None
    if not root.is_dir():
        raise DepsError(f"project folder {project} is not a directory")
    return root


def install(project: Path, say: Say = print) -> None:
    """Make ``.fnd/deps/<hash>`` match requirements.txt; raises DepsError."""
    root = _root(project)
    try:
        requirements = (root / REQUIREMENTS).read_bytes()
    except FileNotFoundError:
        say(f"no {REQUIREMENTS} in {root}: nothing to install")
        return
    except OSError as exc:
        raise DepsError(f"{root / REQUIREMENTS} cannot be read: {exc.strerror}") from None
    digest = deps_hash(requirements)
    top = root / DEPS_DIR
    final = top / digest
    shown = f"{DEPS_DIR}/{digest}"
    runtime = fnd_runtime_versions()
    manifest = read_manifest(final)
    if manifest is not None and not stale_shared(manifest, runtime):
        say(f"up to date: {shown}")
        return
    if importlib.util.find_spec("pip") is None:
        raise DepsError(f"pip is not installed for {sys.executable}, and fnd deps installs with "
                        f"it: {sys.executable} -m ensurepip adds it")
    _refuse_pinned_conflicts(requirements, runtime)
    _make_traversable(root, top)
    build = Path(tempfile.mkdtemp(prefix=f".tmp-{digest[:12]}-", dir=top))
    try:
        say(f"installing {REQUIREMENTS} into {shown} (pip)")
        _pip(root / REQUIREMENTS, build, runtime)
        installed, shared = _drop_fnd_packages(build, runtime)
        _write_manifest(build, requirements, installed, shared)
        _make_readable(build)
        _swap_in(build, final)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    listed = ", ".join(f"{name} {version}" for name, version in sorted(installed.items()))
    say(f"installed: {shown} ({listed or 'no packages'})")
    if shared:
        say("  served by fnd's own copy: "
            + ", ".join(f"{name} {version}" for name, version in sorted(shared.items())))


def prune(project: Path, say: Say = print) -> None:
    """Remove every folder under .fnd/deps that the current requirements.txt does not use.

    Run it after the reload that switched to the new folder: workers of the old generation
    still import from theirs until then.
    """
    root = _root(project)
    top = root / DEPS_DIR
    try:
        current = deps_hash((root / REQUIREMENTS).read_bytes())
    except FileNotFoundError:
        current = None
    except OSError as exc:
        raise DepsError(f"{root / REQUIREMENTS} cannot be read: {exc.strerror}") from None
    removed = 0
    for entry in sorted(top.iterdir()) if top.is_dir() else []:
        if entry.name == current:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed += 1
        say(f"removed: {DEPS_DIR}/{entry.name}")
    if not removed:
        say("nothing to prune")


def _requirement_lines(text: str) -> Iterator[str]:
    """The requirement part of each line of a requirements file (options and comments out)."""
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            yield line.split(" --", 1)[0].strip()  # per-requirement options: --hash=...


def _refuse_pinned_conflicts(requirements: bytes, runtime: dict[str, str]) -> None:
    """Refuse, before anything is downloaded, a line asking for another version of a package
    fnd runs on. Lines pip alone understands (URLs, paths) are left to the check after it."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # fnd's own dependencies do not include packaging; pip's copy does
        from pip._vendor.packaging.requirements import (  # type: ignore
            InvalidRequirement,
            Requirement,
        )
    for line in _requirement_lines(requirements.decode("utf-8", "replace")):
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue  # not for this interpreter: pip skips it too
        name = normalize(requirement.name)
        ours = runtime.get(name)
        if ours is not None and not requirement.specifier.contains(ours, prereleases=True):
            raise DepsError(_conflict(name, str(requirement.specifier), ours))


def _conflict(name: str, theirs: str, ours: str) -> str:
    return (f"{REQUIREMENTS} asks for {name}{theirs}, but fnd itself runs on {name} {ours}: "
            f"a project cannot replace one of fnd's own packages (use {name}=={ours}, or "
            "leave it out: functions can import fnd's copy)")


def _pip(requirements: Path, target: Path, runtime: dict[str, str]) -> None:
    # Constraints: a dependency fnd also has resolves to fnd's version, so a project asking
    # for `requests` does not get a newer urllib3 than fnd's and a needless refusal.
    with tempfile.NamedTemporaryFile("w", prefix="fnd-constraints-", suffix=".txt") as pins:
        pins.write("".join(f"{name}=={version}\n" for name, version in sorted(runtime.items())
                           if name != "fnd"))
        pins.flush()
        command = [sys.executable, "-m", "pip", "install", "--target", str(target),
                   "--requirement", str(requirements), "--constraint", pins.name,
                   "--no-input", "--disable-pip-version-check", "--no-warn-script-location"]
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in (result.stdout + result.stderr).splitlines()
                 if line.strip() and "is ignored: it is neither" not in line]
        tail = "\n".join(f"  pip: {line}" for line in lines[-_PIP_TAIL:])
        why = ""
        if "(constraint)" in result.stdout + result.stderr:
            why = (": a requirement needs another version of a package fnd itself runs on "
                   "(pip's '(constraint)' lines are fnd's versions)")
        raise DepsError(f"pip could not install {REQUIREMENTS} (exit {result.returncode})"
                        f"{why}; nothing was changed\n{tail}")


def _distributions(target: Path) -> Iterator[tuple[Path, str, str]]:
    """(dist-info folder, name, version) of every distribution installed in ``target``."""
    for info in sorted(target.glob("*.dist-info")):
        try:
            headers = HeaderParser().parsestr((info / "METADATA").read_text("utf-8", "replace"))
        except OSError:
            continue
        if headers["Name"] and headers["Version"]:
            yield info, str(headers["Name"]), str(headers["Version"])


def _drop_fnd_packages(
    target: Path, runtime: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Remove the distributions fnd has too (same version); refuse another version.
    Returns (kept, removed) as {normalized name: version}."""
    kept: dict[str, str] = {}
    shared: dict[str, str] = {}
    for info, name, version in _distributions(target):
        key = normalize(name)
        ours = runtime.get(key)
        if ours is None:
            kept[key] = version
        elif ours == version:
            _uninstall(target, info)
            shared[key] = version
        else:
            raise DepsError(_conflict(key, f" {version} (as pip resolved it)", ours))
    _refuse_shadowing(target, runtime)
    return kept, shared


def top_level_names(paths: Iterable[str]) -> set[str]:
    """The importable top-level names among a distribution's files (paths as in RECORD)."""
    names: set[str] = set()
    for path in paths:
        first, slash, _ = path.partition("/")
        if first.startswith(".") or first.endswith((".dist-info", ".data")) \
                or first == "__pycache__":
            continue  # scripts (../../bin), metadata, caches
        if slash:
            names.add(first)
        elif first.endswith(".py"):
            names.add(first.removesuffix(".py"))
        elif first.endswith(".so"):
            names.add(first.split(".", 1)[0])
    return names


def _refuse_shadowing(target: Path, runtime: dict[str, str]) -> None:
    """Refuse a project package under another name that brings a module of one of fnd's
    (PyPI's `dotenv` and fnd's `python-dotenv` are both `import dotenv`): first on the path,
    it would replace fnd's for every import not done yet in the worker."""
    ours: dict[str, str] = {}
    for name in runtime:
        files = importlib.metadata.files(name) or []
        ours.update((module, name) for module in top_level_names(str(f) for f in files))
    for info, name, version in _distributions(target):
        with open(info / "RECORD", newline="") as record:
            modules = top_level_names(row[0] for row in csv.reader(record) if row)
        for module in sorted(modules & set(ours)):
            raise DepsError(f"{name} {version} provides the module `{module}`, which is fnd's "
                            f"own (from {ours[module]} {runtime[ours[module]]}): a project "
                            "cannot replace it; use another package")


def _uninstall(target: Path, info: Path) -> None:
    """Delete one distribution's files, as listed in its RECORD, from ``target``."""
    folders: set[Path] = set()
    with open(info / "RECORD", newline="") as record:
        for row in csv.reader(record):
            if not row:
                continue
            # pip --target installs under <tmp>/lib/python and moves that folder's content
            # and its scripts (<tmp>/bin) into the target: "../../bin/x" is target/bin/x.
            name = row[0].removeprefix("../../")
            path = (target / name).resolve()
            if not path.is_relative_to(target.resolve()):
                continue  # a RECORD entry outside the folder is not ours to delete
            path.unlink(missing_ok=True)
            folders.update(p for p in path.parents if p.is_relative_to(target) and p != target)
    shutil.rmtree(info, ignore_errors=True)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        shutil.rmtree(folder / "__pycache__", ignore_errors=True)
        with contextlib.suppress(OSError):  # only once empty: another one may share it
            folder.rmdir()


def _write_manifest(target: Path, requirements: bytes, installed: dict[str, str],
                    shared: dict[str, str]) -> None:
    (target / MANIFEST).write_text(json.dumps({
        "requirements_sha256": hashlib.sha256(requirements).hexdigest(),
        "interpreter": interpreter_tag(),
        "installed": installed,
        "shared": shared,  # left to fnd's copy: the folder is stale once these change
    }, indent=2, sort_keys=True) + "\n")


def _make_traversable(root: Path, top: Path) -> None:
    """.fnd and .fnd/deps exist and worker uids may pass through them (umask or not)."""
    top.mkdir(parents=True, exist_ok=True)
    for folder in (root / ".fnd", top):
        mode = stat.S_IMODE(folder.stat().st_mode)
        if mode & 0o555 != 0o555:
            folder.chmod(mode | 0o555)


def _make_readable(target: Path) -> None:
    """Directories a+rx, files a+r: worker uids import from here, whatever pip's umask made."""
    for folder, dirs, files in os.walk(target):
        for name in [*dirs, *files, ""]:
            path = os.path.join(folder, name) if name else folder
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            need = 0o555 if stat.S_ISDIR(st.st_mode) else 0o444
            if st.st_mode & need != need:
                os.chmod(path, stat.S_IMODE(st.st_mode) | need)


def _swap_in(build: Path, final: Path) -> None:
    """Rename the finished folder into place; a stale one with the same name goes aside first
    (two renames: a worker starting in between finds no folder and fails its imports)."""
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{final.name[:12]}-", dir=final.parent))
        os.rename(final, old / final.name)
        os.rename(build, final)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(build, final)
    except OSError:
        if read_manifest(final) is None:  # not another fnd deps finishing first
            raise
