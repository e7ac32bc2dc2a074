"""What `fnd deploy` checks in a release folder before it switches anything.

The same checks the daemon makes when it starts or reloads, run here by the daemon's own code
(:func:`fnd.daemon.server.read_project`: the project scan, syntax errors, a protected function
without AUTH_TOKEN, requirements not installed; :mod:`fnd.daemon.sandbox.read_check`: files a
worker uid cannot read), plus one the daemon leaves to the operator: a ``.env`` others may
read. What only a worker can find (a top-level exception, a missing handler) is found by the
reload that follows the switch, and a failed reload switches back.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from fnd.daemon.config import ConfigError, load_config
from fnd.daemon.sandbox.read_check import check_readable_for_uid, project_paths
from fnd.daemon.sandbox.uid_claim import FIRST_UID
from fnd.daemon.server import StartupError, read_project, refused


@dataclass
class Preflight:
    problems: list[str] = field(default_factory=list)  # any one refuses the release
    not_served: list[str] = field(default_factory=list)  # allow_broken: served as 500s


def check_release(release: Path) -> Preflight:
    """Every problem of the release at once, in the daemon's words."""
    result = Preflight()
    try:
        st = os.stat(release)
    except OSError as exc:
        result.problems.append(f"release {release} cannot be read: {exc.strerror}")
        return result
    if not stat.S_ISDIR(st.st_mode):
        result.problems.append(f"release {release} is not a folder")
        return result
    try:
        config = load_config(release)
        project = read_project(config)
    except (ConfigError, StartupError) as exc:
        result.problems.append(str(exc))
        return result
    if refused(config, project, []):
        result.problems.extend(project.problems)
    else:
        result.not_served.extend(project.problems)
    result.problems.extend(_env_problems(release))
    uid = config.uid_base if config.uid_base is not None else FIRST_UID
    result.problems.extend(
        f"worker uid {uid} cannot read: {problem}"
        for problem in check_readable_for_uid(uid, uid, project_paths(str(config.project_dir))))
    return result


def _env_problems(release: Path) -> list[str]:
    """The project's secrets are for the daemon (root) alone."""
    path = release / ".env"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [f".env cannot be read: {exc.strerror}"]
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return [f".env is mode {mode:04o}: its secrets are readable by others; "
                f"chmod 0600 {path}"]
    return []
