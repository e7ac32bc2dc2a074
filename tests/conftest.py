"""Suite-wide markers: ``root_only`` tests skip, with the reason, when not run as root.

They need what only root has here: per-worker uids, cgroups, mounts. As another user the rest
of the suite still runs (fnd then serves with a degraded sandbox, as it would for that user).
"""

from __future__ import annotations

import os

import pytest

ROOT_ONLY = "root_only"


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
