"""fnd installs under the one name `fnd`: no top-level `daemon`, `worker` or `protocol`.

The test venv is a regular `pip install` of this checkout with python-daemon installed beside
it (the `test` extra), whose import name is `daemon`: both must work in one environment.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

GENERIC = ("daemon", "worker", "protocol")


def test_fnd_installs_only_under_its_own_name() -> None:
    files = importlib.metadata.distribution("fnd").files or []
    top_level = {f.parts[0] for f in files if not f.parts[0].startswith("..")}
    assert top_level == {"fnd", "fnd-0.1.0.dist-info"}, top_level
    assert not [str(f) for f in files if f.parts[0] in GENERIC]


def test_python_daemon_installs_beside_fnd() -> None:
    owners = importlib.metadata.packages_distributions()
    assert owners.get("daemon") == ["python-daemon"], owners.get("daemon")
    assert owners.get("fnd") == ["fnd"]
    assert not any(owners.get(name) == ["fnd"] for name in GENERIC)
    # In one fresh interpreter: python-daemon's `daemon`, fnd's server and author surface.
    script = ("import daemon, fnd, fnd.daemon.server, fnd.testing;"
              "assert hasattr(daemon, 'DaemonContext');"
              "assert fnd.daemon.server.__name__ == 'fnd.daemon.server';"
              "print(fnd.Twilio.__module__, fnd.Context.__module__)")
    out = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["fnd.worker.twilio_api", "fnd.worker.context"]


def test_importing_fnd_does_not_load_the_worker_side() -> None:
    # The daemon imports `fnd` for its version; the author names load on first use only.
    script = ("import sys, fnd, fnd.daemon.server;"
              "print(sorted(m for m in sys.modules if m.startswith('fnd.worker.')))")
    out = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "[]"
