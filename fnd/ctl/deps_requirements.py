"""What pip may be asked by `fnd deps`: the project's requirements, checked line by line, and
the package sources the operator allows (docs/handlers.md#python-packages).

requirements.txt is written by whoever writes the project, the party the worker sandbox
exists to contain, so fnd reads it itself and pip never does: pip gets a file fnd wrote,
holding only requirements by name (with versions, markers, extras and ``--hash``). Anything
that changes where packages come from (an index, a folder of packages, a trusted host, an
editable install, a path, a URL) is refused with one line naming the file, the line and the
``fnd deps`` flag the operator uses instead. ``-r``/``-c`` may only name files inside the
project: a plain relative path, opened below the project's directory handle with no symlink
followed anywhere, so ``-r /etc/shadow`` is refused without the file ever being opened.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field

from fnd.daemon.http.safe_open import open_beneath

try:
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:  # fnd's own dependencies do not include packaging; pip's copy does
    from pip._vendor.packaging.requirements import (  # type: ignore
        InvalidRequirement,
        Requirement,
    )

REQUIREMENTS = "requirements.txt"
MAX_FILE_BYTES = 1 << 20  # a requirements file (or one it includes) larger than this is refused
MAX_DEPTH = 8  # -r inside -r inside ...
_COMMENT = re.compile(r"(^|\s+)#.*$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_HASH = re.compile(r"^(sha256|sha384|sha512):[0-9a-fA-F]+$")
_ARCHIVES = (".whl", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tar", ".zip")
_PASSED_ON = ("--pre", "--prefer-binary", "--require-hashes")  # change nothing about sources
_SOURCE_FLAGS = {
    "-i": "--index-url URL", "--index-url": "--index-url URL",
    "--extra-index-url": "--extra-index-url URL", "--no-index": "--find-links DIR",
    "-f": "--find-links DIR", "--find-links": "--find-links DIR",
    "--trusted-host": "--trusted-host HOST",
}
_INCLUDES = {"-r": False, "--requirement": False, "-c": True, "--constraint": True}
_WITH_VALUE = {"-r", "-c", "-e", "-f", "-i"}


class RequirementsError(Exception):
    """A line fnd does not hand to pip; the message is one line naming file, line and fix."""


@dataclass(frozen=True)
class Sources:
    """Where packages may come from: the operator's `fnd deps` flags, never the project."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    allow_sdist: bool = False

    def pip_args(self) -> list[str]:
        args = ["--index-url", self.index_url] if self.index_url else []
        for flag, values in (("--extra-index-url", self.extra_index_urls),
                             ("--find-links", self.find_links),
                             ("--trusted-host", self.trusted_hosts)):
            for value in values:
                args += [flag, value]
        if not self.allow_sdist:  # no setup.py of anyone's runs unless the operator says so
            args += ["--only-binary", ":all:"]
        return args

    def local_paths(self) -> list[str]:
        """Folders and files on this host the sources name (the build may read them)."""
        found = []
        for value in (self.index_url or "", *self.extra_index_urls, *self.find_links):
            if value.startswith("file://"):
                found.append(value.removeprefix("file://"))
            elif value.startswith("/"):
                found.append(value)
        return found


@dataclass(frozen=True)
class Line:
    """One requirement as pip will see it, and where it was written."""

    requirement: Requirement
    hashes: tuple[str, ...]
    where: str

    def text(self) -> str:
        return " ".join([str(self.requirement), *(f"--hash={h}" for h in self.hashes)])


@dataclass
class Checked:
    """Everything the project's requirements ask, in the form fnd hands to pip."""

    requirements: list[Line] = field(default_factory=list)
    constraints: list[Line] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def requirements_file(self) -> str:
        return "".join(f"{o}\n" for o in self.options) + _lines(self.requirements)

    def constraints_file(self) -> str:
        return _lines(self.constraints)


def _lines(lines: list[Line]) -> str:
    return "".join(f"{line.text()}\n" for line in lines)


def read_project_file(root_fd: int, relpath: str) -> bytes:
    """A regular file below the project's directory handle, no symlink followed; bounded.
    Raises FileNotFoundError when it is not there, RequirementsError for anything else."""
    try:
        fd = open_beneath(root_fd, relpath)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RequirementsError(f"{relpath} is a symlink or lies below one: fnd deps does "
                                    "not follow symlinks in the project; put the file "
                                    "itself there") from None
        raise RequirementsError(f"{relpath} cannot be read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RequirementsError(f"{relpath} is not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise RequirementsError(f"{relpath} is larger than {MAX_FILE_BYTES} bytes")
        chunks, size = [], 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise RequirementsError(f"{relpath} is larger than {MAX_FILE_BYTES} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def check(root_fd: int, data: bytes) -> Checked:
    """The project's requirements.txt (its bytes, already read), checked; raises
    RequirementsError at the first line fnd does not hand to pip."""
    checked = Checked()
    _check_file(root_fd, REQUIREMENTS, data, checked, constraint=False, seen=[REQUIREMENTS])
    return checked


def _check_file(root_fd: int, relpath: str, data: bytes, out: Checked, constraint: bool,
                seen: list[str]) -> None:
    text = data.decode("utf-8-sig", "replace")
    for number, line in _logical_lines(text):
        where = f"{relpath} line {number}"
        tokens = line.split()
        if tokens[0].startswith("-"):
            _option(root_fd, relpath, where, tokens, out, constraint, seen)
            continue
        cut = next((i for i, t in enumerate(tokens) if t.startswith("-")), len(tokens))
        parsed = Line(_requirement(where, " ".join(tokens[:cut])),
                      _hashes(where, tokens[cut:]), where)
        (out.constraints if constraint else out.requirements).append(parsed)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first physical line number, text) with continuations joined and comments removed."""
    found: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        line = _COMMENT.sub("", pending + raw).strip()
        pending = ""
        if line:
            found.append((start, line))
    if pending.strip():
        found.append((start, _COMMENT.sub("", pending).strip()))
    return [(n, line) for n, line in found if line]


def _option(root_fd: int, relpath: str, where: str, tokens: list[str], out: Checked,
            constraint: bool, seen: list[str]) -> None:
    name, value = _split_option(tokens)
    if name in _SOURCE_FLAGS:
        raise RequirementsError(
            f"{where}: {name} is not accepted in a project's requirements (it changes where "
            f"packages come from); the operator allows a source with: fnd deps "
            f"{_SOURCE_FLAGS[name]}")
    if name in ("-e", "--editable"):
        raise RequirementsError(
            f"{where}: {name} is not accepted (an editable install builds from a path or a "
            "repository); name the package and its version, from an index the operator "
            "allows with fnd deps --index-url URL")
    if name == "--no-binary":
        raise RequirementsError(
            f"{where}: --no-binary is not accepted (building from source runs the package's "
            "code); the operator allows source builds with: fnd deps --allow-sdist")
    if name in _INCLUDES:
        if not value:
            raise RequirementsError(f"{where}: {name} needs a file name")
        _include(root_fd, relpath, where, name, value, out,
                 constraint or _INCLUDES[name], seen)
        return
    if name in _PASSED_ON and value is None:
        if name not in out.options:
            out.options.append(name)
        return
    raise RequirementsError(
        f"{where}: {name} is not accepted in a project's requirements (fnd deps hands pip "
        f"requirements, -r/-c files inside the project, --hash, and {', '.join(_PASSED_ON)})")


def _split_option(tokens: list[str]) -> tuple[str, str | None]:
    first = tokens[0]
    if first.startswith("--") and "=" in first:
        name, _, value = first.partition("=")
        return name, value
    if not first.startswith("--") and len(first) > 2 and first[:2] in _WITH_VALUE:
        return first[:2], first[2:]  # -rfile
    return first, (" ".join(tokens[1:]) or None)


def _include(root_fd: int, relpath: str, where: str, name: str, value: str, out: Checked,
             constraint: bool, seen: list[str]) -> None:
    """-r/-c: a plain relative path inside the project, checked before anything is opened."""
    refused = (f"{where}: {name} {value} is refused: a project's requirements may only "
               "include a file inside the project, by a relative path (no absolute path, no "
               "'..' out of the project, no URL, no symlink)")
    if _URL.match(value) or value.startswith(("/", "~")) or "$" in value or "\\" in value:
        raise RequirementsError(refused)
    target = posixpath.normpath(posixpath.join(posixpath.dirname(relpath), value))
    if target == ".." or target.startswith("../") or target in (".", ""):
        raise RequirementsError(refused)
    if target in seen or len(seen) >= MAX_DEPTH:
        raise RequirementsError(f"{where}: {name} {value} is refused: includes loop or nest "
                                f"deeper than {MAX_DEPTH}")
    try:
        data = read_project_file(root_fd, target)
    except FileNotFoundError:
        raise RequirementsError(f"{where}: {name} {value}: no such file in the "
                                "project") from None
    except RequirementsError as exc:
        raise RequirementsError(f"{where}: {name} {value}: {exc}") from None
    _check_file(root_fd, target, data, out, constraint, [*seen, target])


def _requirement(where: str, text: str) -> Requirement:
    local = (f"{where}: `{text}` is a local path, not accepted in a project's requirements: "
             "name the package (and its version); the operator makes a folder of packages "
             "available with: fnd deps --find-links DIR")
    url = (f"{where}: `{text}` is a URL, not accepted in a project's requirements: name the "
           "package (and its version); the operator allows its index with: fnd deps "
           "--index-url URL (or --find-links URL)")
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        if _URL.match(text) or re.match(r"^(git|hg|svn|bzr)\+", text):
            raise RequirementsError(url) from None
        if text.startswith((".", "/", "~")) or "/" in text or "\\" in text \
                or text.lower().endswith(_ARCHIVES):
            raise RequirementsError(local) from None
        raise RequirementsError(f"{where}: `{text}` is not a requirement fnd deps can read "
                                f"({str(exc).splitlines()[0]}); write NAME[extras] VERSION-SPEC ; "
                                "MARKER") from None
    if requirement.url:
        raise RequirementsError(url)
    if requirement.name.lower().endswith(_ARCHIVES):  # pip would look for such a file
        raise RequirementsError(local)
    return requirement


def _hashes(where: str, tokens: list[str]) -> tuple[str, ...]:
    found: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "--hash" and index + 1 < len(tokens):
            value, index = tokens[index + 1], index + 2
        elif token.startswith("--hash="):
            value, index = token.removeprefix("--hash="), index + 1
        else:
            raise RequirementsError(
                f"{where}: {token.split('=')[0]} is not accepted after a requirement (only "
                "--hash=ALGORITHM:DIGEST is)")
        if not _HASH.match(value):
            raise RequirementsError(f"{where}: --hash={value} is not ALGORITHM:DIGEST with "
                                    "sha256, sha384 or sha512")
        found.append(value)
    return tuple(found)
