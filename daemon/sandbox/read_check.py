"""Start-up check: can a worker's uid read the interpreter, the venv and the project?

A worker drops to an unprivileged uid before it runs anything. If the interpreter lives
under a 0700 directory (the default python under /root), every lazy import in the worker
fails later in confusing ways (``ModuleNotFoundError``, ``LookupError: unknown encoding:
idna``). ``fnd serve`` calls :func:`check_readable_for_uid` first and refuses to start with
the explanation it returns.

The check forks a child that really drops to the uid/gid and tries each path (stat, list or
open), so it agrees with the kernel; the explanation comes from the mode bits along the path.
"""

from __future__ import annotations

import json
import os
import select
import site
import stat
import sys
import time
from pathlib import Path

from fnd.daemon.deps_folder import DepsMismatch, installed_folder

_INTERPRETER_HINT = (
    "python lives under {dir} which is mode {mode}; build the venv from /usr/bin/python3 in "
    "a world-readable place (e.g. /usr/bin/python3 -m venv /opt/fnd-venv) and run fnd from it"
)
_GENERIC_HINT = "make it readable for other users (chmod o+rX on each directory, o+r on files)"
_DEPS_HINT = ("fnd deps makes its folders readable by every uid; something changed it since: "
              "run chmod -R a+rX {dir}")
_HOME_HINT = ("move the project to a world-readable place such as /srv/NAME (the systemd unit "
              "hides /root and /home from fnd anyway)")
_MAX_FILES = 10000


def interpreter_paths() -> list[str]:
    """The interpreter binary (resolved), its prefixes and site-packages."""
    paths = [os.path.realpath(sys.executable), sys.prefix, sys.base_prefix, sys.exec_prefix]
    paths += [p for p in site.getsitepackages() if os.path.isdir(p)]
    return list(dict.fromkeys(paths))


def project_paths(project_dir: str) -> list[str]:
    """functions/, assets/, the installed requirements (.fnd/deps/<hash>) and every file
    under them."""
    found: list[str] = []
    for top in [os.path.join(project_dir, sub) for sub in ("functions", "assets")] \
            + _deps_folder(project_dir):
        if not os.path.isdir(top):
            continue
        found.append(top)
        for root, dirs, files in os.walk(top):
            found += [os.path.join(root, name) for name in (*dirs, *files)]
            if len(found) > _MAX_FILES:
                return found
    return found


def _deps_folder(project_dir: str) -> list[str]:
    try:
        folder = installed_folder(Path(project_dir))
    except DepsMismatch:
        return []  # not installed at all: the project scan refuses it, with the command
    return [str(folder)] if folder is not None else []


def check_readable_for_uid(
    uid: int, gid: int, paths: list[str], timeout: float = 10.0
) -> list[str]:
    """One explanation per path that uid/gid cannot read (or traverse); [] when all is well.

    Needs root to switch uid; without root it checks as the current user.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(r)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
            found = {p: err for p in paths if (err := _try_read(p))}
            os.write(w, json.dumps(found).encode())
        except BaseException:  # noqa: BLE001 - the parent reports a silent child
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    try:
        data = _read_all(r, timeout)
    finally:
        os.close(r)
        _reap(pid)
    try:
        failures: dict[str, str] = json.loads(data)
    except ValueError:
        return [f"could not check paths as uid {uid}: the checking process failed"]
    return _grouped(failures, uid, gid)


def _grouped(failures: dict[str, str], uid: int, gid: int) -> list[str]:
    """One line per cause: paths behind the same closed directory are one problem."""
    lines: list[str] = []
    behind: dict[str, list[str]] = {}
    for path, error in failures.items():
        blocking = _blocking_component(path, uid, gid)
        if blocking is None or blocking[0] == os.path.abspath(path) or _is_interpreter(path):
            lines.append(_explain(path, error, uid, gid))
        else:
            behind.setdefault(blocking[0], []).append(path)
    for where, paths in behind.items():
        if len(paths) == 1:
            lines.append(_explain(paths[0], failures[paths[0]], uid, gid))
            continue
        st = os.stat(where)
        mode = f"{stat.S_IMODE(st.st_mode):04o}"
        hint = _HOME_HINT if where in ("/root", "/home") or where.startswith("/home/") \
            else _GENERIC_HINT
        deps = _deps_root(paths[0])
        if deps is not None:
            hint = _DEPS_HINT.format(dir=deps)
        lines.append(f"{where} is mode {mode} owned by uid {st.st_uid}: worker uid {uid} "
                     f"cannot reach the {len(paths)} files behind it (first: {paths[0]}); "
                     + hint)
    return lines


def _try_read(path: str) -> str:
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)
    return ""


def _read_all(fd: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks = []
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _reap(pid: int) -> None:
    for _ in range(100):
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)


def _allowed(st: os.stat_result, uid: int, gid: int, bits: int) -> bool:
    if st.st_uid == uid:
        return st.st_mode & (bits << 6) == bits << 6
    if st.st_gid == gid:
        return st.st_mode & (bits << 3) == bits << 3
    return st.st_mode & bits == bits


def _blocking_component(path: str, uid: int, gid: int) -> tuple[str, os.stat_result] | None:
    """The first directory on the way that the uid cannot traverse, or the path itself."""
    path = os.path.abspath(path)
    parts = path.split("/")
    for i in range(2, len(parts)):
        ancestor = "/".join(parts[:i]) or "/"
        try:
            st = os.stat(ancestor)
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode) and not _allowed(st, uid, gid, 0o1):
            return ancestor, st
    try:
        st = os.stat(path)
    except OSError:
        return None
    need = 0o5 if stat.S_ISDIR(st.st_mode) else 0o4
    return (path, st) if not _allowed(st, uid, gid, need) else None


def _is_interpreter(path: str) -> bool:
    roots = {os.path.realpath(p) for p in interpreter_paths()}
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def _explain(path: str, error: str, uid: int, gid: int) -> str:
    message = f"{path}: not readable by worker uid {uid} gid {gid} ({error})"
    blocking = _blocking_component(path, uid, gid)
    if blocking:
        where, st = blocking
        mode = f"{stat.S_IMODE(st.st_mode):04o}"
        message += f"; {where} is mode {mode} owned by uid {st.st_uid}"
        if _is_interpreter(path):
            return message + "; " + _INTERPRETER_HINT.format(dir=where, mode=mode)
    hint = _INTERPRETER_HINT.format(dir="a private directory", mode="0700")
    deps = _deps_root(path)
    if deps is not None:
        return message + "; " + _DEPS_HINT.format(dir=deps)
    return message + "; " + (hint if _is_interpreter(path) else _GENERIC_HINT)


def _deps_root(path: str) -> str | None:
    """The .fnd/deps/<hash> folder ``path`` is in, if any."""
    head, marker, rest = path.partition("/.fnd/deps/")
    if not marker or not rest:
        return None
    return head + marker + rest.split("/", 1)[0]
