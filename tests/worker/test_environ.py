"""fnd.worker.environ: the base a worker starts from, and the project's variables per invocation."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fnd.worker import environ

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def saved_environment(tmp_path: Path) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ["TMPDIR"] = str(tmp_path)
    os.environ["DAEMON_SECRET"] = "x"
    try:
        environ.reset()
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def context(**variables: str | None) -> dict[str, str | None]:
    return {"PATH": "/hook", "DOMAIN_NAME": "example.com", "SERVICE_SID": None, **variables}


def test_reset_keeps_only_the_base(tmp_path: Path) -> None:
    seen = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # pytest's own
    assert seen == {"PATH": environ.BASE_PATH, "HOME": str(tmp_path),
                                "LANG": "C.UTF-8", "TMPDIR": str(tmp_path)}


def test_variables_follow_the_invocation(tmp_path: Path) -> None:
    environ.apply(context(API_KEY="k1", HOME="/project/home"))
    assert os.environ["API_KEY"] == "k1" and os.environ["HOME"] == "/project/home"
    assert os.environ["PATH"] == environ.BASE_PATH and "DOMAIN_NAME" not in os.environ
    assert "SERVICE_SID" not in os.environ
    environ.apply(context(OTHER="o"))  # a reload: API_KEY gone, HOME back to the base
    assert "API_KEY" not in os.environ and os.environ["OTHER"] == "o"
    assert os.environ["HOME"] == str(tmp_path)


def test_unchanged_variables_are_not_rewritten() -> None:
    environ.apply(context(API_KEY="k1"))
    os.environ["API_KEY"] = "changed by the function"
    environ.apply(context(API_KEY="k1"))
    assert os.environ["API_KEY"] == "changed by the function"
    environ.apply(context(API_KEY="k2"))
    assert os.environ["API_KEY"] == "k2"


def test_names_and_values_putenv_refuses_stay_out() -> None:
    environ.apply({"": "x", "A=B": "x", "NUL": "a\0b", "FINE": "yes"})
    assert os.environ["FINE"] == "yes"
    assert "NUL" not in os.environ and "A=B" not in os.environ
