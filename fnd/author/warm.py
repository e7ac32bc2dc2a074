"""A warm `fnd serve` per project for `fnd invoke`: started on first use, reused after.

The first `fnd invoke` of a project starts a keeper (``python -m fnd.author.warm``) in its own
session; the keeper runs the real `fnd serve` (one sandboxed worker, JSON log to a file) on
unix sockets in a private state folder, and stops it after ``idle`` seconds without a call,
or on SIGTERM (``fnd invoke --stop``). Later calls find it by the state folder (one per
project folder and user: ``/tmp/fnd-invoke-UID/HASH``) and send it plain HTTP.

A reused daemon serves the current code: each call compares a fingerprint of the project
(names, sizes and mtimes of its files) with the one the daemon last loaded. Changed
functions or assets: a reload over the control socket (the daemon's own, as `fnd reload`);
a changed fnd.toml, .env, requirements or deps folder, other ``--dev``/``--timeout``/
``--keep-warm`` flags or ``FND_*`` variables, a reinstalled fnd or a failed reload: the daemon
is stopped and a new one started, so errors are reported as a fresh start reports them.
Calls of one project take turns (a lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fnd
from fnd.author.launcher import FileTail, LaunchError, Line, ServeProcess

IDLE_DEFAULT = 600.0  # seconds without a call before the warm daemon exits
_SKIP_DIRS = {".git", ".fnd", "__pycache__", "node_modules", ".venv", ".pytest_cache"}
# Read once at start: a change to one of these restarts the daemon instead of reloading it.
_CONFIG_FILES = {"fnd.toml", ".env", "requirements.txt"}
RESTART_REASON = "restart-reason"  # why the last call started a new daemon


def state_folder(project: Path) -> Path:
    """``/tmp/fnd-invoke-UID/HASH`` for the project's real path (0700, this user's)."""
    top = Path(f"/tmp/fnd-invoke-{os.geteuid()}")
    top.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(top)
    if st.st_uid != os.geteuid() or not top.is_dir() or top.is_symlink() or st.st_mode & 0o077:
        raise LaunchError(f"{top} is not a private folder of this user; remove it")
    digest = hashlib.sha256(str(project.resolve()).encode()).hexdigest()[:16]
    folder = top / digest
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def fingerprint(project: Path) -> tuple[str, str]:
    """(config, code): digests of the names, sizes and mtimes of the project's files."""
    config, code = hashlib.sha256(), hashlib.sha256()
    for top, dirs, files in os.walk(project):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        rel_top = os.path.relpath(top, project)
        for name in sorted(files):
            try:
                st = os.stat(os.path.join(top, name))
            except OSError:
                continue
            entry = f"{rel_top}/{name} {st.st_size} {st.st_mtime_ns}\n".encode()
            (config if rel_top == "." and name in _CONFIG_FILES else code).update(entry)
    deps = project / ".fnd" / "deps"
    with contextlib.suppress(OSError):
        for folder in sorted(deps.iterdir()):
            config.update(f"deps/{folder.name} {folder.stat().st_mtime_ns}\n".encode())
    return config.hexdigest(), code.hexdigest()


def install_stamp() -> str:
    """What the daemon's code is: a reinstall of fnd (new mtimes) restarts it."""
    package = Path(fnd.__file__).parent
    stamps = [str(os.stat(package / name).st_mtime_ns) for name in ("__init__.py", "cli.py")]
    return f"{sys.executable} {' '.join(stamps)}"


@dataclass
class Warm:
    """A running warm daemon: where it listens and the log its lines go to."""

    folder: Path
    listen: str
    log: Path
    keeper: int

    def log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def lines_since(self, offset: int) -> list[Line]:
        return FileTail(self.log, lambda: True, offset).lines

    def invocation(self, offset: int, invocation_id: str, timeout: float = 10.0) -> Line | None:
        tail = FileTail(self.log, lambda: _alive(self.keeper), offset)
        return tail.wait_for(lambda e: e.get("event") == "invocation"
                             and e.get("invocation_id") == invocation_id, timeout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return b"fnd.author.warm" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One call of a project at a time: checks, (re)starts and the request take turns.

    ``--stop`` removes the folder, lock file included: a waiter that then gets the lock of
    the removed file takes the new one instead."""
    while True:
        # --stop may remove the folder at any moment: make it again and retry.
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        try:
            lock = open(folder / "lock", "a")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            continue
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                held = os.fstat(lock.fileno())
                current = os.stat(folder / "lock")
            except FileNotFoundError:
                continue
            if (held.st_dev, held.st_ino) != (current.st_dev, current.st_ino):
                continue
            yield  # the lock is released when the file is closed
            return


def _read_state(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(folder / "state.json")


def ensure(project: Path, serve_args: list[str], idle: float = IDLE_DEFAULT) -> Warm:
    """The project's warm daemon on its current code; started or reloaded when needed.

    Call with :func:`locked` held. LaunchError with fnd's reason when it cannot start.
    """
    folder = state_folder(project)
    # Lists, not tuples: the key is compared with its JSON copy in the state file.
    settings = sorted([k, v] for k, v in os.environ.items() if k.startswith("FND_"))
    key = {"project": str(project.resolve()), "args": serve_args, "install": install_stamp(),
           "environment": settings, "idle": idle}  # FND_* variables are settings too
    config_fp, code_fp = fingerprint(project)
    state = _read_state(folder)
    keeper = int(state.get("keeper", 0) or 0)
    why = "no warm daemon"
    if keeper and _alive(keeper):
        stored = state.get("key")
        old_key: dict[str, Any] = stored if isinstance(stored, dict) else {}
        changed = [name for name in key if old_key.get(name) != key[name]]
        if state.get("config") != config_fp:
            changed.append("fnd.toml/.env/requirements")
        why = ("settings, fnd or fnd.toml/.env/requirements changed: "
               f"{', '.join(changed) or 'the state'}")
        if state.get("key") == key and state.get("config") == config_fp:
            warm = Warm(folder, str(state["listen"]), folder / "serve.log", keeper)
            refused = None if state.get("code") == code_fp else _reload(folder)
            if refused is None:
                state["code"] = code_fp
                _write_state(folder, state)
                touch(folder)
                return warm
            why = f"reload refused: {refused}"
        stop(folder)
    (folder / RESTART_REASON).write_text(why + "\n")  # for whoever wonders why (tests too)
    return _start(folder, project, serve_args, idle, key, config_fp, code_fp)


def _reload(folder: Path) -> str | None:
    """None once the daemon serves the current code, else why it does not."""
    from fnd.ctl import client

    try:
        answer = asyncio.run(client.request(str(folder / "control.sock"), {"cmd": "reload"}, 60))
    except (OSError, ValueError) as exc:  # TimeoutError is an OSError
        return f"{type(exc).__name__}: {exc}"
    if answer.get("ok") and not answer.get("problems"):
        return None
    return str(answer.get("error") or answer.get("problems") or answer)


def touch(folder: Path) -> None:
    (folder / "used").touch()


def _start(folder: Path, project: Path, serve_args: list[str], idle: float,
           key: dict[str, Any], config_fp: str, code_fp: str) -> Warm:
    log = folder / "serve.log"
    log.unlink(missing_ok=True)
    (folder / "state.json").unlink(missing_ok=True)
    touch(folder)
    keeper = subprocess.Popen(
        [sys.executable, "-P", "-m", "fnd.author.warm", str(folder), str(project), str(idle),
         *serve_args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C of this call does not reach it
    )
    tail = FileTail(log, lambda: keeper.poll() is None)
    deadline = time.monotonic() + 60
    line: Line | None = None
    while time.monotonic() < deadline and keeper.poll() is None and not log.exists():
        time.sleep(0.02)
    if log.exists():
        line = tail.wait_for(lambda e: e.get("event") in ("ready", "cannot start"),
                             max(0.0, deadline - time.monotonic()))
    if line is None or line["event"] != "ready":
        _end_keeper(keeper.pid)
        keeper.wait()
        if line is not None:
            raise LaunchError(str(line.get("reason")))
        lines = tail.lines if log.exists() else []
        last = [str(e.get("text") or e.get("reason") or e.get("event")) for e in lines[-5:]]
        raise LaunchError("fnd serve did not become ready: " + " | ".join(last))
    listen = str(line["listen"])
    _write_state(folder, {"keeper": keeper.pid, "listen": listen, "key": key,
                          "config": config_fp, "code": code_fp})
    return Warm(folder, listen, log, keeper.pid)


def _end_keeper(pid: int, timeout: float = 40.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def stop(folder: Path) -> bool:
    """Stop the warm daemon whose state is in ``folder``; whether one was running."""
    state = _read_state(folder)
    keeper = int(state.get("keeper", 0) or 0)
    running = bool(keeper) and _alive(keeper)
    if running:
        _end_keeper(keeper)
    for name in ("state.json", "serve.log", "used", "http.sock", "control.sock"):
        (folder / name).unlink(missing_ok=True)
    return running


def remove(folder: Path) -> None:
    """The state folder, lock included (called with the lock held, after :func:`stop`)."""
    shutil.rmtree(folder, ignore_errors=True)


# -- the keeper --------------------------------------------------------------------------------

def keep(folder: Path, project: Path, idle: float, serve_args: list[str]) -> int:
    """Run the daemon until ``idle`` s pass without a call, SIGTERM, or its own exit."""
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    daemon = ServeProcess(project, serve_args, unix=True, folder=folder,
                          log_file=folder / "serve.log", ready_timeout=None)
    try:
        while not stopping and daemon.process.poll() is None:
            try:
                used = (folder / "used").stat().st_mtime
            except OSError:
                used = 0.0
            if time.time() - used > idle:
                break
            time.sleep(0.5)
    finally:
        daemon.stop()
        state = _read_state(folder)
        if state.get("keeper") == os.getpid():
            (folder / "state.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(keep(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]))
