"""The start-up self-check's function: a few escapes that a sandboxed worker must not manage.

``fnd serve`` runs it once, through the pool like any request, before it listens
(daemon/canary.py). Each check is the errno name of the refusal, or "ok" when the attempt
worked, i.e. an escape. Every attempt is harmless if it does succeed: reads read one byte,
the write is undone, the signal is 0, and PTRACE_SEIZE does not stop the traced process
(the daemon kills a worker that managed any escape, which ends the trace).

Event: ``project`` (the project dir), ``hidden`` (files that must stay unreadable: names at
the project's root, e.g. .env, or absolute paths, e.g. an `env_file`), ``daemon_pid``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

_PTRACE_SEIZE = 0x4206
_libc = ctypes.CDLL(None, use_errno=True)


def _outcome(attempt: Callable[[], object]) -> str:
    try:
        attempt()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")
    return "ok"


def _read(path: str) -> None:
    if os.path.isdir(path):
        os.listdir(path)
        return
    with open(path, "rb") as file:
        file.read(1)


def _write_outside_scratch() -> None:
    path = f"/tmp/.fnd-self-check-{os.getpid()}"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.unlink(path)


def _ptrace_seize(pid: int) -> None:
    if _libc.ptrace(ctypes.c_long(_PTRACE_SEIZE), ctypes.c_long(pid), None, None) != 0:
        raise OSError(ctypes.get_errno(), "ptrace")


def _netlink() -> None:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()


def _vsock() -> None:
    # on a Firecracker/QEMU/Nitro guest this is a line to the hypervisor
    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM, 0).close()


def handler(context: Any, event: dict[str, Any]) -> dict[str, Any]:
    project = str(event["project"])
    daemon = int(event["daemon_pid"])
    checks = {"list project root": _outcome(lambda: _read(project))}
    for name in event.get("hidden", []):
        checks[f"read {name}"] = _outcome(partial(_read, os.path.join(project, str(name))))
    checks.update({
        "read daemon environ": _outcome(lambda: _read(f"/proc/{daemon}/environ")),
        "write outside scratch": _outcome(_write_outside_scratch),
        "setuid root": _outcome(lambda: os.setuid(0)),
        "ptrace zygote": _outcome(lambda: _ptrace_seize(os.getppid())),
        "signal daemon": _outcome(lambda: os.kill(daemon, 0)),
        "netlink socket": _outcome(_netlink),
        "vsock socket": _outcome(_vsock),
    })
    return {"checks": checks, "environ": sorted(os.environ)}
