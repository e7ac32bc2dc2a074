"""The worker puts the project's installed packages first on sys.path, .pth files included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys, json
from fnd.worker.loader import use_deps
use_deps(sys.argv[1])
import six  # fnd's venv may have a six of its own: the project's must win
print(json.dumps({"path": sys.path[:2], "six": six.__file__}))
"""


def test_the_deps_folder_and_its_pth_paths_come_first(tmp_path: Path) -> None:
    deps = tmp_path / "deps"
    (deps / "extra").mkdir(parents=True)
    (deps / "six.py").write_text("X = 'project'\n")
    (deps / "extra.pth").write_text("extra\n")  # a path relative to the site folder
    done = subprocess.run([sys.executable, "-P", "-c", SCRIPT, str(deps)], capture_output=True,
                          text=True, timeout=60, check=True)
    seen = json.loads(done.stdout)
    assert seen["path"] == [str(deps), str(deps / "extra")]
    assert seen["six"] == str(deps / "six.py")


def test_no_folder_changes_nothing() -> None:
    script = "import sys; from fnd.worker.loader import use_deps; p = list(sys.path); " \
             "use_deps(''); print(sys.path == p)"
    done = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "True"
