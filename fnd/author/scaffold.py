"""`fnd init DIR`: a new function project from the templates in ``fnd/author/templates/project``.

Template files are stored as ``<name>.tmpl`` so that the example functions are not linted
or type-checked as part of fnd itself, and a leading ``_`` stands for a leading dot (package
data globs skip dotfiles): ``_env.example.tmpl`` becomes ``.env.example``. ``{{project}}``
is replaced by the folder's name.

Files get mode 0644 and folders 0755 whatever the umask: sandboxed workers run as other
users and must be able to read ``functions/`` and ``assets/``.
"""

from __future__ import annotations

import shlex
import sys
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

_SUFFIX = ".tmpl"


def test_command() -> str:
    """How the project's tests run: with the Python fnd is installed in, as they import
    ``fnd.testing`` (a bare ``pytest`` may belong to another environment, without fnd).
    The README and ``fnd init``'s message both say this."""
    return f"{shlex.quote(sys.executable)} -m pytest"


class ScaffoldError(Exception):
    """The target cannot be used (not empty, not a folder); the message says why."""


def create_project(target: Path) -> list[Path]:
    """Write a new project into ``target`` (created if missing); return the files written."""
    if target.exists():
        if not target.is_dir():
            raise ScaffoldError(f"{target} exists and is not a folder")
        if any(target.iterdir()):
            raise ScaffoldError(f"{target} is not empty; fnd init only writes into a new or "
                                "empty folder")
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o755)
    written: list[Path] = []
    _copy(resources.files("fnd.author") / "templates" / "project", target, target.name, written)
    return sorted(written)


def _copy(source: Traversable, target: Path, project: str, written: list[Path]) -> None:
    for entry in sorted(source.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            folder = target / entry.name
            folder.mkdir(mode=0o755)
            folder.chmod(0o755)
            _copy(entry, folder, project, written)
        elif entry.name.endswith(_SUFFIX):
            name = entry.name[: -len(_SUFFIX)]
            if name.startswith("_"):
                name = "." + name[1:]
            path = target / name
            text = entry.read_text("utf-8").replace("{{project}}", project)
            text = text.replace("{{test_command}}", test_command())
            path.write_text(text.replace("{{python}}", shlex.quote(sys.executable)), "utf-8")
            path.chmod(0o644)
            written.append(path)
