"""The suite's own rules (tests/conftest.py): a unit test stays in its process and off the
network; the installed fnd is compared with the checkout's, file by file
(tests/install_check.py)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.install_check import CHECKOUT, difference

pytestmark = pytest.mark.unit


def test_a_unit_test_cannot_start_a_process_or_reach_the_network() -> None:
    with pytest.raises(AssertionError, match="must not start a process"):
        subprocess.run(["true"], check=False)
    with pytest.raises(AssertionError, match="must not start a process"):
        os.fork()
    with pytest.raises(AssertionError, match=r"must not use the network \(192\.0\.2\.1\)"):
        socket.create_connection(("192.0.2.1", 9), timeout=0.1)
    with socket.socket() as loopback:  # a test server in the test's own loop is allowed
        loopback.bind(("127.0.0.1", 0))


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_same_code_matches_through_the_checkouts_symlinks(tmp_path: Path) -> None:
    _tree(tmp_path / "daemon", {"server.py": "x = 1\n", "py.typed": ""})
    checkout = _tree(tmp_path / "checkout", {"__init__.py": "", "cli.py": "main = 1\n"})
    (checkout / "daemon").symlink_to(tmp_path / "daemon")
    installed = _tree(tmp_path / "site" / "fnd", {
        "__init__.py": "", "cli.py": "main = 1\n", "daemon/server.py": "x = 1\n",
        "daemon/py.typed": "", "daemon/__pycache__/server.cpython-311.pyc": "compiled",
    })
    assert difference(checkout, installed) is None


def test_a_changed_a_new_and_a_removed_module_are_each_named(tmp_path: Path) -> None:
    checkout = _tree(tmp_path / "checkout", {"a.py": "new\n", "b.py": "", "t/x.py.tmpl": "t"})
    installed = _tree(tmp_path / "site" / "fnd",
                      {"a.py": "old\n", "gone.py": "", "t/x.py.tmpl": "t"})
    problem = difference(checkout, installed)
    assert problem is not None
    assert "changed: a.py" in problem and "not installed: b.py" in problem
    assert "installed but gone from the checkout: gone.py" in problem


def test_no_install_at_all_says_so(tmp_path: Path) -> None:
    assert difference(CHECKOUT, tmp_path / "fnd") == f"fnd is not installed in {tmp_path}"
