"""Which control socket `fnd status`, `fnd reload` and `fnd metrics` talk to.

An instance of the template unit (`fnd@NAME.service`) keeps its sockets in /run/fnd/NAME/, so
its NAME is enough; `--control PATH` names any socket; neither: the daemon's default path.
"""

from __future__ import annotations

import os

from fnd.daemon.ops.control import default_control_path

RUN_DIR = "/run/fnd"


class InstanceError(ValueError):
    """The command line names no usable daemon; the message says why."""


def control_path(name: str | None, control: str | None, run_dir: str = RUN_DIR) -> str:
    """The control socket for an instance NAME (or a path given in its place), --control
    PATH, or the default."""
    if name and control:
        raise InstanceError("give an instance NAME or --control PATH, not both")
    if control:
        return control
    if not name:
        return default_control_path()
    if "/" in name:  # a socket path where the name goes: take it as one
        return name
    if name in (".", ".."):
        raise InstanceError(f"{name!r} is not an instance name")
    return os.path.join(run_dir, name, "control.sock")


def instances(run_dir: str = RUN_DIR) -> list[str]:
    """The instance names with a control socket under `run_dir`, sorted."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    return sorted(n for n in names if os.path.exists(os.path.join(run_dir, n, "control.sock")))


def hint(name: str | None, control: str | None, run_dir: str = RUN_DIR) -> str:
    """When the default path was tried and instances run here: how to reach them."""
    if name or control:
        return ""
    found = instances(run_dir)
    if not found:
        return ""
    return f" (instances here: {', '.join(found)}; name one: fnd status NAME)"
