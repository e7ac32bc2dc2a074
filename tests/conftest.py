"""Suite-wide rules: ``root_only`` tests skip, with the reason, when not run as root; a test
that leaves a `fnd serve` running or a project copy on disk fails the session, named, and so
does anything new in the checkout (a pip build's build/ or fnd.egg-info).

Root-only tests need what only root has here: per-worker uids, cgroups, mounts. As another
user the rest of the suite still runs (fnd then serves with a degraded sandbox, as it would
for that user).

Markers, set per module (``pytestmark``): ``unit`` tests run in one process on the
checkout's code; ``scripts/test -m unit`` is the inner loop. A unit test that starts a
process or reaches an address other than loopback fails (``_unit_stays_in_process``); a
test cannot be both ``unit`` and ``root_only``. ``slow``: seconds per test (pip, venvs,
fuzzing); ``-m "not slow"`` leaves them out. Any other test may run the *installed* fnd
(``python -m fnd.cli``, workers as other uids): a run that selects one refuses to start
when the install is not the checkout's code (tests/install_check.py), naming
``scripts/setup-venv``.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests import install_check
from tests.fndserver import Ledger

ROOT_ONLY = "root_only"
UNIT = "unit"
SLOW = "slow"
_BEFORE = pytest.StashKey[set[str]]()
# Hypothesis keeps its files (a cache of the code's constants, even with database=None) in
# ./.hypothesis unless told otherwise: in a folder of this run, not in the checkout.
_HYPOTHESIS = tempfile.mkdtemp(prefix="fnd-hypothesis-")
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", _HYPOTHESIS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{ROOT_ONLY}: needs root (worker uids, cgroups, mounts); skipped otherwise")
    config.addinivalue_line(
        "markers", f"{UNIT}: no processes, no network, no root; the checkout's code only "
                   "(scripts/test -m unit)")
    config.addinivalue_line(
        "markers", f"{SLOW}: takes seconds (pip, venvs, fuzzing); -m 'not slow' skips them")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    both = [item.nodeid for item in items
            if item.get_closest_marker(UNIT) and item.get_closest_marker(ROOT_ONLY)]
    if both:
        raise pytest.UsageError(f"marked both {UNIT} and {ROOT_ONLY}: {', '.join(both[:5])}")
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: worker uids, cgroups and mounts "
                                   "(run the suite as root, as CI does)")
    for item in items:
        if item.get_closest_marker(ROOT_ONLY) is not None:
            item.add_marker(skip)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse a run whose end-to-end tests would exercise a stale install."""
    if all(item.get_closest_marker(UNIT) for item in session.items):
        return  # unit tests import the checkout: nothing installed is used
    problem = install_check.difference()
    if problem is not None:
        pytest.exit(f"{problem}.\nEnd-to-end tests run the installed copy: reinstall it with "
                    f"FND_VENV={sys.prefix} scripts/setup-venv (scripts/test does this when "
                    "needed), or run only the unit tests (-m unit).",
                    returncode=pytest.ExitCode.USAGE_ERROR)


def _blocked(what: str) -> Callable[..., NoReturn]:
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError(f"a unit test must not {what}: drop its unit mark, or use a fake")
    return refuse


def _loopback_only(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (connect, bind) refusing an IP address other than loopback: a test server
    on 127.0.0.1 in the test's own event loop stays in the process; anything else is network."""
    def checked(sock: socket.socket, address: Any, *args: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = str(address[0])
            try:
                loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise AssertionError(f"a unit test must not use the network ({host}): drop its "
                                     "unit mark, or use a fake")
        return method(sock, address, *args)
    return checked


@pytest.fixture(autouse=True)
def _unit_stays_in_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under the unit mark, starting a process or using the network fails the test."""
    if request.node.get_closest_marker(UNIT) is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
            patch.setattr(os, name, _blocked(f"start a process (os.{name})"))
        patch.setattr(subprocess.Popen, "_execute_child", _blocked("start a process"))
        for name in ("connect", "connect_ex", "bind"):
            patch.setattr(socket.socket, name, _loopback_only(getattr(socket.socket, name)))
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    Ledger.current_test = item.nodeid  # what the harness makes now is this test's
    try:
        return (yield)
    finally:
        Ledger.current_test = ""


CHECKOUT = Path(__file__).resolve().parents[1]
CACHES = {".pytest_cache", "__pycache__", ".mypy_cache", ".ruff_cache"}


def _checkout_entries() -> set[str]:
    return {path.name for path in CHECKOUT.iterdir()} - CACHES


def pytest_sessionstart(session: pytest.Session) -> None:
    session.stash[_BEFORE] = _checkout_entries()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = Ledger.left_behind()
    Ledger.clean_up()
    shutil.rmtree(_HYPOTHESIS, ignore_errors=True)
    # What a test wrote into the checkout (a pip build's build/ and *.egg-info): reported only.
    new = sorted(_checkout_entries() - session.stash.get(_BEFORE, _checkout_entries()))
    left += [("", f"{CHECKOUT / name} (in the checkout, not removed)") for name in new]
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.section("left behind", sep="-", red=True)
        for test, what in left:
            reporter.line(f"{test or 'some test'}: {what}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
