"""What pip installed, checked against fnd's own packages (docs/handlers.md#python-packages).

The worker has fnd's packages imported before the project's folder is on its path, so a
second copy would be half used, and a module of the same name first on the path would
replace fnd's for every import not done yet. Every installed distribution is read, in each
format pip may leave (``*.dist-info`` with RECORD, ``*.egg-info`` folders with
installed-files.txt/top_level.txt, ``*.egg-info`` files), and, as the belt that does not
depend on any metadata being honest, every top-level importable entry of the folder
(package folders, ``.py``, ``.pyc``, extension modules, and what ``.pth`` lines add or
import) is compared with fnd's module names.

Call these only on a settled build folder (:func:`fnd.ctl.deps_folders.settle`): nothing
but folders and regular files, all root's.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import os
import posixpath
import re
import shutil
from collections.abc import Iterable, Iterator
from email.parser import HeaderParser
from pathlib import Path

_NOT_MODULES = ("bin", "__pycache__")
_PTH_IMPORT = re.compile(r"^\s*(?:import\s+([\w., ]+)|from\s+([\w.]+)\s+import\b)")


class ShadowError(Exception):
    """The folder would replace one of fnd's own packages or modules; says which."""


def distributions(target: Path) -> Iterator[tuple[Path, str, str]]:
    """(metadata path, name, version) of every distribution installed in ``target``."""
    for info in sorted(target.iterdir()):
        if info.name.endswith(".dist-info"):
            meta = info / "METADATA"
        elif info.name.endswith(".egg-info"):
            meta = info / "PKG-INFO" if info.is_dir() else info
        else:
            continue
        try:
            headers = HeaderParser().parsestr(meta.read_text("utf-8", "replace"))
        except OSError:
            continue
        if headers["Name"] and headers["Version"]:
            yield info, str(headers["Name"]), str(headers["Version"])


def files_of(info: Path) -> list[str]:
    """The files a distribution says it installed, relative to the target folder."""
    if info.name.endswith(".dist-info"):
        with contextlib.suppress(OSError), open(info / "RECORD", newline="") as record:
            # pip --target installs under <tmp>/lib/python and moves that folder's content
            # and its scripts (<tmp>/bin) into the target: "../../bin/x" is target/bin/x.
            return [row[0].removeprefix("../../") for row in csv.reader(record) if row]
        return []
    if not info.is_dir():  # a lone PKG-INFO file: only the folder's own entries tell
        return []
    found: list[str] = []
    with contextlib.suppress(OSError):
        lines = (info / "installed-files.txt").read_text("utf-8", "replace").splitlines()
        found += [posixpath.normpath(posixpath.join(info.name, line)) for line in lines if line]
    with contextlib.suppress(OSError):
        tops = (info / "top_level.txt").read_text("utf-8", "replace").split()
        found += [f"{name}/__init__.py" for name in tops]
    return found


def top_level_names(paths: Iterable[str]) -> set[str]:
    """The importable top-level names among a distribution's files (paths as in RECORD)."""
    names: set[str] = set()
    for path in paths:
        first, slash, _ = path.partition("/")
        if first.startswith(".") or first.endswith((".dist-info", ".egg-info", ".data")) \
                or first == "__pycache__":
            continue  # scripts (../../bin), metadata, caches
        if slash:
            names.add(first)
        else:
            names.update(_module_of_file(first))
    return names


def _module_of_file(name: str) -> set[str]:
    if name.endswith((".py", ".pyc")):
        return {name.rsplit(".", 1)[0]}
    if name.endswith(".so") or ".so." in name or name.endswith(".pyd"):
        return {name.split(".", 1)[0]}  # x.cpython-311-x86_64-linux-gnu.so
    return set()


def fnd_modules(runtime: dict[str, str]) -> dict[str, str]:
    """{top-level module: the distribution of fnd's that provides it}."""
    ours: dict[str, str] = {}
    for name in runtime:
        files = importlib.metadata.files(name) or []
        ours.update((module, name) for module in top_level_names(str(f) for f in files))
    return ours


def refuse_shadowing(target: Path, runtime: dict[str, str]) -> None:
    """Refuse a folder that brings a module of one of fnd's packages: a distribution that
    lists it (PyPI's `dotenv` and fnd's `python-dotenv` are both `import dotenv`), or any
    top-level entry of that name, whatever installed it."""
    ours = fnd_modules(runtime)
    for info, name, version in distributions(target):
        for module in sorted(top_level_names(files_of(info)) & set(ours)):
            raise ShadowError(f"{name} {version} provides the module `{module}`, which is "
                              f"fnd's own (from {ours[module]} {runtime[ours[module]]}): a "
                              "project cannot replace it; use another package")
    for module, entry in sorted(top_level_entries(target).items()):
        if module in ours:
            raise ShadowError(f"the installed packages put `{module}` on the path ({entry}), "
                              f"which is fnd's own module (from {ours[module]} "
                              f"{runtime[ours[module]]}): a project cannot replace it; "
                              "remove the package that brings it")


def top_level_entries(target: Path) -> dict[str, str]:
    """{importable name: the entry of ``target`` that makes it importable}."""
    found: dict[str, str] = {}
    for entry in sorted(target.iterdir()):
        name = entry.name
        if entry.is_dir():
            if "." not in name and name not in _NOT_MODULES:
                found.setdefault(name, f"{name}/")
        elif name.endswith(".pth"):
            for module, why in _pth_entries(target, entry):
                found.setdefault(module, why)
        else:
            for module in _module_of_file(name):
                found.setdefault(module, name)
    return found


def _pth_entries(target: Path, pth: Path) -> Iterator[tuple[str, str]]:
    """What a .pth line makes importable: the modules an ``import`` line names, and the
    entries of a folder a path line adds (a folder outside ``target`` is refused)."""
    for number, line in enumerate(pth.read_text("utf-8", "replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        why = f"{pth.name} line {number}"
        match = _PTH_IMPORT.match(line)
        if match:
            for module in re.split(r"[\s,]+", match[1] or match[2] or ""):
                if module:
                    yield module.split(".")[0], why
            continue
        folder = os.path.normpath(os.path.join(str(target), line))
        if not folder.startswith(str(target).rstrip("/") + "/"):
            raise ShadowError(f"{why} adds {line} to the path, outside the installed folder: "
                              "fnd deps refuses a package that imports from elsewhere")
        if os.path.isdir(folder):
            for module in top_level_entries(Path(folder)):
                yield module, why


def uninstall(target: Path, info: Path) -> None:
    """Delete one distribution's files, as it lists them, from ``target``."""
    folders: set[str] = set()
    for name in files_of(info):
        relative = posixpath.normpath(name)
        if relative.startswith(("../", "/")) or relative in ("..", "."):
            continue  # an entry outside the folder is not ours to delete
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            (target / relative).unlink()
        parts = relative.split("/")[:-1]
        folders.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    if info.is_dir():
        shutil.rmtree(info, ignore_errors=True)
    else:
        info.unlink(missing_ok=True)
    for folder in sorted(folders, key=lambda p: p.count("/"), reverse=True):
        shutil.rmtree(target / folder / "__pycache__", ignore_errors=True)
        with contextlib.suppress(OSError):  # only once empty: another one may share it
            (target / folder).rmdir()

