"""Two projects on one host behind one real nginx, as docs/operating.md sets them up.

Each project runs as an instance of the template unit: the daemon is started with
systemd/fnd@.service's own `ExecStart=` (no systemd here; its RuntimeDirectory made by hand),
with default settings. The shipped site (systemd/nginx-fnd.conf) has one `server` per domain,
each proxying to its instance's unix socket. nginx routes by the Host header, each project
answers for its own domain only, `fnd status NAME` finds each instance, their workers run
under uids that do not overlap, and project A's code cannot read B's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.fndserver import FIXTURES, FndServer, world_readable_copy
from tests.nginx import INSTANCES, running_nginx

pytestmark = pytest.mark.root_only  # worker uids

ROOT = Path(__file__).resolve().parents[2]
SHOP, SUPPORT = INSTANCES["shop"], INSTANCES["support"]  # A answers for shop, B for support


UNIT = (ROOT / "systemd" / "fnd@.service").read_text()


def _exec_start(instance: str, project: Path) -> list[str]:
    """The unit's ExecStart= for `fnd@instance`, with /srv/fnd/%i moved to `project`."""
    match = re.search(r"^ExecStart=(.+)$", UNIT, re.M)
    assert match is not None
    argv = match.group(1).replace("/srv/fnd/%i", str(project)).replace("%i", instance).split()
    assert argv[0] == "/opt/fnd-venv/bin/fnd", argv
    return [sys.executable, "-P", "-m", "fnd.cli", *argv[1:], "--log-format", "json"]


@contextmanager
def _instance(instance: str, fixture: str) -> Iterator[FndServer]:
    project = world_readable_copy(FIXTURES / fixture)
    run_dir = Path("/run/fnd") / instance
    run_dir.mkdir(parents=True, mode=0o750)  # RuntimeDirectory=fnd/%i
    server = FndServer(project, [], wrap=lambda _: _exec_start(instance, project))
    server.control = str(run_dir / "control.sock")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        shutil.rmtree(project.parent, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)


# Instance names of this run: unique, so that a run beside another never meets its sockets.
NAMES = {"shop": f"shop-t{os.getpid()}", "support": f"support-t{os.getpid()}"}


@pytest.fixture(scope="module")
def host() -> Iterator[tuple[FndServer, FndServer, str]]:
    with _instance(NAMES["shop"], "project_a") as a, \
            _instance(NAMES["support"], "project_b") as b:
        (b.project / ".env").chmod(0o600)  # as docs/operating.md installs it
        workdir = Path(tempfile.mkdtemp(prefix="fnd-two-", dir="/tmp"))
        sockets = {key: f"/run/fnd/{name}/http.sock" for key, name in NAMES.items()}
        try:
            with running_nginx(sockets, workdir) as base:
                yield a, b, base
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _fnd_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "fnd.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def _get(base: str, domain: str, path: str, **params: str) -> requests.Response:
    return requests.get(base + path, params=params, headers={"Host": domain}, timeout=30)


def test_each_domain_reaches_its_own_project(host: tuple[FndServer, FndServer, str]) -> None:
    a, b, base = host
    shop, support = _get(base, SHOP, "/who"), _get(base, SUPPORT, "/who")
    assert shop.status_code == 200 and shop.json()["project"] == "a"
    assert support.status_code == 200 and support.json()["project"] == "b"
    # Each daemon logged its own request, under nginx's request id.
    for server, response in ((a, shop), (b, support)):
        line = server.invocation(response.headers["X-Fnd-Invocation-Id"])
        assert line["function"] == "/who"
    # A route only A has is not found through B's domain.
    assert _get(base, SHOP, "/reach").status_code == 200
    assert _get(base, SUPPORT, "/reach").status_code == 404
    # The operator finds each instance by its name.
    for server, name in ((a, NAMES["shop"]), (b, NAMES["support"])):
        status = _fnd_cli("status", name, "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)["pid"] == server.process.pid


def test_the_two_projects_workers_run_under_separate_uids(
        host: tuple[FndServer, FndServer, str]) -> None:
    a, b, base = host
    uid_a = _get(base, SHOP, "/who").json()["uid"]
    uid_b = _get(base, SUPPORT, "/who").json()["uid"]
    assert uid_a != uid_b
    held_a, held_b = a.status()["uids"], b.status()["uids"]
    range_a = range(held_a["first"], held_a["last"] + 1)
    range_b = range(held_b["first"], held_b["last"] + 1)
    assert not set(range_a) & set(range_b)
    assert uid_a in range_a and uid_b in range_b


def test_project_a_cannot_read_project_bs_files(host: tuple[FndServer, FndServer, str]) -> None:
    _, b, base = host
    for target in (b.project / "functions" / "who.py", b.project / ".env"):
        answer = _get(base, SHOP, "/reach", open=str(target))
        assert answer.json() == {"open": "PermissionError"}, target


def _has_deps_command() -> bool:
    return _fnd_cli("deps", "--help").returncode == 0


# ---- A project's own dependencies ------------------------------------------------------
# Project A's functions/e164.py imports phonenumbers, which fnd's venv does not have: `fnd
# deps` installs A's requirements.txt into A/.fnd/deps/, for A's workers alone. That command is
# being built separately; this test is wired to it once it exists.


def test_project_a_uses_its_own_dependency_through_nginx(
        host: tuple[FndServer, FndServer, str]) -> None:
    if not _has_deps_command():
        pytest.skip("`fnd deps` does not exist yet: the per-project dependency step is wired "
                    "in once it is merged")
    a, b, base = host
    done = subprocess.run([sys.executable, "-P", "-m", "fnd.cli", "deps", str(a.project)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    reload = _fnd_cli("reload", NAMES["shop"])  # as `systemctl reload fnd@shop` does
    assert reload.returncode == 0, reload.stdout + reload.stderr
    answer = _get(base, SHOP, "/e164", n="(202) 555-0143")
    assert answer.status_code == 200 and answer.text == "+12025550143", answer.text
    # B has no such dependency: A's install is A's alone.
    assert not (b.project / ".fnd" / "deps").exists()
