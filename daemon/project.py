"""Scan a function project folder into an immutable route table (docs/handlers.md#a-function-file).

Mapping rules:

- ``functions/a/b.py`` is the function ``/a/b``; ``assets/img/logo.png`` the asset
  ``/img/logo.png`` (assets keep their extension).
- A visibility marker is a dot-separated part of the *file name* that sits between the name
  proper and the extension: ``x.protected.py`` → ``/x`` protected, ``data.private.txt`` →
  ``/data.txt`` private, ``a.private.tar.gz`` → ``/a.tar.gz`` private. More than one marker in a
  name is a problem (which one would win is a guess).
- Every whitespace character in a folder or file name becomes ``-``.
- Valid path rule: every ``/``-separated segment is non-empty, is not ``.`` or ``..``, and uses
  only RFC 3986 *unreserved* characters (``A-Z a-z 0-9 - . _ ~``). Those never need
  percent-encoding, so the path Twilio requests is byte-for-byte the route name. Anything else
  (including non-ASCII letters) is reported as an invalid path and gets no route.
- Ignored silently: dotfiles and dot-folders, ``__pycache__``, non-``.py`` files under
  ``functions/``.

Safety: every file is resolved through symlinks and refused (a problem) when its real path
leaves the project folder, lands on a hidden file or ``fnd.toml`` (the project's secrets and
configuration are never served or run), or is not a regular file (a FIFO would hang the
reader). Routes store the real path with the file's device and inode, and HTTP paths are
looked up in a dict and never joined onto the filesystem, so path traversal cannot happen by
construction. Symlinks are followed here, at scan time only: serving an asset reopens the
recorded real path with no symlink followed and checks it is still the same file
(:mod:`fnd.daemon.http.asset_files`).

Problems are collected, never raised: ``--strict`` is the caller's business. The daemon never
imports user code; functions are only parsed with :mod:`ast` to report syntax errors early.
"""

from __future__ import annotations

import ast
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

Kind = Literal["function", "asset"]
Visibility = Literal["public", "protected", "private"]

_MARKERS: dict[str, Visibility] = {"protected": "protected", "private": "private"}
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
_WHITESPACE = re.compile(r"\s")
# Two files of the project that are never served or run, whatever links point at them.
_SECRET_NAMES = frozenset({"fnd.toml"})


class ProjectError(Exception):
    """The project folder itself is missing or not a directory (nothing can be scanned)."""


@dataclass(frozen=True, slots=True)
class Route:
    path: str  # HTTP path, e.g. "/a/b" or "/img/logo.png"
    kind: Kind
    visibility: Visibility
    file: Path  # real (symlink-resolved) path of the file
    error: str | None = None  # why this route answers 500 instead of running
    source: str = ""  # the file as written, relative to the project root (for messages)
    # The file's identity at scan time: an asset is only served while it is still this file.
    device: int = 0
    inode: int = 0
    # A function's code as read at scan time: workers of this generation run exactly this,
    # whatever happens to the file on disk later (docs/operating.md "Deploying").
    code: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        """Route name without the leading slash, as Twilio's ``Runtime.getFunctions`` keys."""
        return self.path[1:]


@dataclass(frozen=True)
class Project:
    root: Path
    routes: Mapping[str, Route]  # served over HTTP (public + protected), by HTTP path
    functions: Mapping[str, Route]  # every function, private included, by path
    assets: Mapping[str, Route]  # every asset, private included, by path
    problems: tuple[str, ...]
    # Where workers import the project's own packages from (.fnd/deps/<hash>); None when the
    # project has no requirements.txt. Filled in by the daemon, which refuses a mismatch.
    deps: Path | None = None
    # Problems that no --allow-broken serves past (requirements not installed: every function
    # could need them); each is also in ``problems``. Filled in by the daemon.
    blocking: tuple[str, ...] = ()

    def lookup(self, http_path: str) -> Route | None:
        """The route serving ``http_path``; None for unknown and private paths (→ 404)."""
        return self.routes.get(http_path)

    def index(self) -> Route | None:
        """What ``GET /`` serves: asset ``/assets/index.html``, else ``/index.html``."""
        for candidate in ("/assets/index.html", "/index.html"):
            route = self.routes.get(candidate)
            if route is not None and route.kind == "asset":
                return route
        return None


def scan_project(root: Path) -> Project:
    """Build the route table of the project at ``root``; raises ProjectError only for root."""
    try:
        real_root = root.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise ProjectError(f"project folder {root} cannot be read: {exc}") from None
    if not real_root.is_dir():
        raise ProjectError(f"project folder {root} is not a directory")

    scanner = _Scanner(real_root)
    scanner.scan("functions", "function")
    scanner.scan("assets", "asset")
    return scanner.result()


def route_table_lines(project: Project, base_url: str = "") -> list[str]:
    """The start-up listing, twilio-run style: functions, then assets, with markers."""
    lines: list[str] = []
    for title, table in (("Functions", project.functions), ("Assets", project.assets)):
        if not table:
            lines.append(f"{title}: none")
            continue
        lines.append(f"{title}:")
        paths = sorted(table)
        for i, path in enumerate(paths):
            route = table[path]
            branch = "└──" if i == len(paths) - 1 else "├──"
            # Private routes are not reachable, so they get no URL.
            shown = path if route.visibility == "private" else base_url + path
            marks = "" if route.visibility == "public" else f" [{route.visibility}]"
            if route.error is not None:
                marks += f" [error: {route.error}]"
            lines.append(f"{branch} {shown}{marks}")
    return lines


def _display(text: str) -> str:
    """File names may hold undecodable bytes (surrogates); make them printable."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class _Candidate:
    path: str
    kind: Kind
    visibility: Visibility
    file: Path
    source: str
    device: int
    inode: int


class _Scanner:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[str] = []
        self.candidates: dict[str, list[_Candidate]] = {}

    def problem(self, message: str) -> None:
        self.problems.append(_display(message))

    def scan(self, top: str, kind: Kind) -> None:
        base = self.root / top
        if not os.path.lexists(base):
            return
        for rel_dir, filename in self._walk(base, top):
            self._add(base, rel_dir, filename, top, kind)

    def _walk(self, base: Path, top: str) -> Iterator[tuple[tuple[str, ...], str]]:
        """Yield (folders below base, file name); follow folder links that stay inside."""
        stack: list[tuple[Path, tuple[str, ...], frozenset[Path]]] = [(base, (), frozenset())]
        while stack:
            folder, rel, ancestors = stack.pop()
            shown = "/".join((top, *rel))
            real = self._inside(folder, shown)
            if real is None:
                continue
            if real in ancestors:  # a link back up the tree would recurse forever
                self.problem(f"{shown}: refused: symlink loop")
                continue
            ancestors = ancestors | {real}
            try:
                with os.scandir(folder) as listing:
                    entries = sorted(listing, key=lambda e: e.name)
            except OSError as exc:
                self.problem(f"{shown}: cannot list folder: {exc.strerror}")
                continue
            subfolders: list[tuple[Path, tuple[str, ...], frozenset[Path]]] = []
            for entry in entries:
                name = entry.name
                if name.startswith(".") or name == "__pycache__":
                    continue
                try:
                    is_dir = entry.is_dir()  # follows links
                except OSError:
                    is_dir = False
                if is_dir:
                    subfolders.append((Path(entry.path), (*rel, name), ancestors))
                else:
                    yield rel, name
            stack.extend(reversed(subfolders))

    def _inside(self, path: Path, shown: str) -> Path | None:
        """The real path of ``path`` if it is safe to use, else None (problem recorded)."""
        try:
            real = path.resolve(strict=True)
        except FileNotFoundError:
            self.problem(f"{shown}: broken symlink")
            return None
        except (OSError, RuntimeError) as exc:
            self.problem(f"{shown}: cannot resolve: {exc}")
            return None
        try:
            inner = real.relative_to(self.root)
        except ValueError:
            self.problem(f"{shown}: refused: resolves to {real}, outside the project folder")
            return None
        if any(p.startswith(".") for p in inner.parts) or inner.as_posix() in _SECRET_NAMES:
            self.problem(f"{shown}: refused: resolves to {inner.as_posix()}, a hidden or "
                         "configuration file of the project")
            return None
        return real

    def _add(self, base: Path, rel: tuple[str, ...], filename: str, top: str, kind: Kind) -> None:
        parts = filename.split(".")
        if kind == "function":
            if len(parts) < 2 or parts[-1] != "py":
                return
            parts.pop()  # functions lose their extension
            middle = range(1, len(parts))
        else:
            middle = range(1, len(parts) - 1)  # the name proper and the extension are not markers
        source = "/".join((top, *rel, filename))

        markers = [i for i in middle if parts[i] in _MARKERS]
        if len(markers) > 1:
            self.problem(f"{source}: more than one visibility marker in the file name")
            return
        visibility: Visibility = "public"
        if markers:
            visibility = _MARKERS[parts.pop(markers[0])]

        segments = [_WHITESPACE.sub("-", s) for s in (*rel, ".".join(parts))]
        bad = next((s for s in segments if not _valid_segment(s)), None)
        route_path = "/" + "/".join(segments)
        if bad is not None:
            self.problem(
                f"{source}: invalid path {route_path!r}: segment {bad!r} must be non-empty, not "
                "'.' or '..', and use only letters A-Z a-z, digits and - . _ ~"
            )
            return

        real = self._inside(base.joinpath(*rel, filename), source)
        if real is None:
            return
        try:
            st = real.stat()
        except OSError as exc:
            self.problem(f"{source}: cannot stat: {exc.strerror}")
            return
        if not stat.S_ISREG(st.st_mode):
            self.problem(f"{source}: refused: not a regular file")
            return
        candidate = _Candidate(route_path, kind, visibility, real, source, st.st_dev, st.st_ino)
        self.candidates.setdefault(route_path, []).append(candidate)

    def result(self) -> Project:
        routes: dict[str, Route] = {}
        functions: dict[str, Route] = {}
        assets: dict[str, Route] = {}
        for path in sorted(self.candidates):
            found = self.candidates[path]
            if len(found) > 1:
                names = ", ".join(sorted(c.source for c in found))
                self.problem(f"path conflict: {names} all map to {path}; none is served")
                continue
            c = found[0]
            code, error = _read_code(c.file, c.source) if c.kind == "function" else (None, None)
            if error is not None:
                self.problem(error)
            route = Route(c.path, c.kind, c.visibility, c.file, error, c.source, c.device,
                          c.inode, code)
            (functions if c.kind == "function" else assets)[path] = route
            if c.visibility != "private":
                routes[path] = route
        return Project(
            root=self.root,
            routes=MappingProxyType(routes),
            functions=MappingProxyType(functions),
            assets=MappingProxyType(assets),
            problems=tuple(self.problems),
        )


def _valid_segment(segment: str) -> bool:
    return segment not in {".", ".."} and _SEGMENT.fullmatch(segment) is not None


def _read_code(file: Path, source: str) -> tuple[bytes | None, str | None]:
    """A function file's code, read once, and why it cannot even be parsed (or None)."""
    try:
        code = file.read_bytes()
    except OSError as exc:
        return None, f"{source}: cannot read: {exc.strerror}"
    return code, _syntax_error(code, source)


def _syntax_error(code: bytes, source: str) -> str | None:
    """Why ``code`` cannot even be parsed (``source:line: message``), or None."""
    try:
        # bytes, so that a PEP 263 coding line is honoured as it will be at import time
        ast.parse(code, filename=source)
    except SyntaxError as exc:  # includes IndentationError
        where = f"{source}:{exc.lineno}" if exc.lineno is not None else source
        return _display(f"{where}: {type(exc).__name__}: {exc.msg}")
    except (ValueError, UnicodeDecodeError) as exc:  # null bytes, undecodable source
        return _display(f"{source}: cannot be parsed: {exc}")
    except (RecursionError, MemoryError):
        return f"{source}: cannot be parsed: nested too deeply"
    return None
