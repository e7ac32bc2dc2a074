"""Suite-wide rules: ``root_only`` tests skip, with the reason, when not run as root; a test
that leaves a `fnd serve` running or a project copy on disk fails the session, named, and so
does anything new in the checkout (a pip build's build/ or fnd.egg-info).

Root-only tests need what only root has here: per-worker uids, cgroups, mounts. As another
user the rest of the suite still runs (fnd then serves with a degraded sandbox, as it would
for that user).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fndserver import Ledger

ROOT_ONLY = "root_only"
_BEFORE = pytest.StashKey[set[str]]()
# Hypothesis keeps its files (a cache of the code's constants, even with database=None) in
# ./.hypothesis unless told otherwise: in a folder of this run, not in the checkout.
_HYPOTHESIS = tempfile.mkdtemp(prefix="fnd-hypothesis-")
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", _HYPOTHESIS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{ROOT_ONLY}: needs root (worker uids, cgroups, mounts); skipped otherwise")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: worker uids, cgroups and mounts "
                                   "(run the suite as root, as CI does)")
    for item in items:
        if item.get_closest_marker(ROOT_ONLY) is not None:
            item.add_marker(skip)


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
