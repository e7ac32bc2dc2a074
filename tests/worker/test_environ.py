"""fnd.worker.environ: the base a worker starts from, and the project's variables per invocation."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fnd.worker import environ

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def env(tmp_path: Path) -> Iterator[environ.Environment]:
    saved = dict(os.environ)
    os.environ["TMPDIR"] = str(tmp_path)
    os.environ["DAEMON_SECRET"] = "x"
    try:
        yield environ.Environment()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def context(**variables: str | None) -> dict[str, str | None]:
    return {"PATH": "/hook", "DOMAIN_NAME": "example.com", "SERVICE_SID": None, **variables}


def test_a_new_environment_keeps_only_the_base(tmp_path: Path) -> None:
    seen = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # pytest's own
    assert seen == {"PATH": environ.BASE_PATH, "HOME": str(tmp_path),
                                "LANG": "C.UTF-8", "TMPDIR": str(tmp_path)}


def test_variables_follow_the_invocation(env: environ.Environment, tmp_path: Path) -> None:
    env.apply(context(API_KEY="k1", HOME="/project/home"))
    assert os.environ["API_KEY"] == "k1" and os.environ["HOME"] == "/project/home"
    assert os.environ["PATH"] == environ.BASE_PATH and "DOMAIN_NAME" not in os.environ
    assert "SERVICE_SID" not in os.environ
    env.apply(context(OTHER="o"))  # a reload: API_KEY gone, HOME back to the base
    assert "API_KEY" not in os.environ and os.environ["OTHER"] == "o"
    assert os.environ["HOME"] == str(tmp_path)


def test_unchanged_variables_are_not_rewritten(env: environ.Environment) -> None:
    env.apply(context(API_KEY="k1"))
    os.environ["API_KEY"] = "changed by the function"
    env.apply(context(API_KEY="k1"))
    assert os.environ["API_KEY"] == "changed by the function"
    env.apply(context(API_KEY="k2"))
    assert os.environ["API_KEY"] == "k2"


def test_names_and_values_putenv_refuses_stay_out(env: environ.Environment) -> None:
    env.apply({"": "x", "A=B": "x", "NUL": "a\0b", "FINE": "yes"})
    assert os.environ["FINE"] == "yes"
    assert "NUL" not in os.environ and "A=B" not in os.environ
