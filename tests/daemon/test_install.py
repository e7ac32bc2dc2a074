"""scripts/setup-venv: a quiet install that writes nothing into the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_setup_venv_is_quiet_and_leaves_the_checkout_alone() -> None:
    if not os.access(os.path.join(sys.prefix, "bin"), os.W_OK):
        pytest.skip(f"{sys.prefix} belongs to another user: setup-venv cannot reinstall into it")
    before = sorted(path.name for path in ROOT.iterdir())
    # The venv running these tests: the install is the one scripts/test just made, redone.
    env = {**os.environ, "FND_VENV": sys.prefix}
    done = subprocess.run([str(ROOT / "scripts" / "setup-venv")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == sys.prefix
    assert done.stderr == "", done.stderr[:2000]  # no setuptools warnings
    assert sorted(path.name for path in ROOT.iterdir()) == before  # no build/, no egg-info
    installed = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    templates = installed / "site-packages" / "fnd" / "author" / "templates" / "project"
    assert (templates / "functions" / "sms" / "reply.py.tmpl").is_file()
    assert (installed / "site-packages" / "fnd" / "worker" / "py.typed").is_file()
