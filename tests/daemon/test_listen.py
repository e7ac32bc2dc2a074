"""Room for max_connections (daemon/http/listen.py): the soft descriptor limit is raised to fit."""

from __future__ import annotations

import subprocess
import sys

_CHILD = """
import resource, sys
from fnd.daemon.http.listen import make_fd_room
resource.setrlimit(resource.RLIMIT_NOFILE, (256, int(sys.argv[1])))
warning = make_fd_room(1000)
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], warning is not None)
"""


def _in_a_child(hard: int) -> str:
    """The soft limit and whether a warning came, in a child (limits are per process)."""
    return subprocess.run([sys.executable, "-c", _CHILD, str(hard)], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_the_soft_limit_is_raised_to_fit_max_connections() -> None:
    assert _in_a_child(4096) == "2024 False"


def test_a_hard_limit_too_low_is_used_whole_and_warned_about() -> None:
    assert _in_a_child(1500) == "1500 True"
