"""`fnd deploy`: a real daemon serving ROOT/project, a symlink to a release folder, switched
by the command; a release it refuses, a reload that fails, a rollback, and the hostile
layouts (a real folder where the link goes, a daemon serving another folder)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.doc_blocks import vm_blocks
from tests.fndserver import FIXTURES, FndServer, Ledger

GOOD = "def handler(context, event, callback):\n    callback(None, {text!r})\n"
BOOT_FAILS = "raise RuntimeError('no database')\n"  # only a worker loading it finds this
BROKEN_SYNTAX = "def handler(context, event, callback)\n    callback(None, 'x')\n"
SERVE_ARGS = ["--workers-min", "1", "--workers-max", "2"]


def _fnd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "fnd.cli", *args], capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


@contextmanager
def _root() -> Iterator[Path]:
    """A world-readable ROOT (the test's /srv/fnd), removed after."""
    root = Path(tempfile.mkdtemp(prefix="fnd-test-deploy-", dir="/tmp"))
    Ledger.copies.append((Ledger.current_test, root))
    try:
        root.chmod(0o755)
        (root / "releases").mkdir(mode=0o755)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _release(root: Path, name: str, hello: str) -> Path:
    """ROOT/releases/NAME: the ops fixture with functions/hello.py as given, made the way
    the operating recipe says (world-readable, .env 0600)."""
    release = root / "releases" / name
    shutil.copytree(FIXTURES / "ops", release)
    (release / "functions" / "hello.py").write_text(hello)
    for path in [release, *release.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (release / ".env").chmod(0o600)
    return release


def _deploy(root: Path, *args: str, control: str | None = None) -> subprocess.CompletedProcess[str]:
    where = ["--control", control] if control else []
    return _fnd("deploy", "--root", str(root), *where, *args)


@contextmanager
def _serving(root: Path) -> Iterator[FndServer]:
    """fnd serve ROOT/project (the symlink), its control socket in ROOT."""
    server = FndServer(root / "project", SERVE_ARGS)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _events(server: FndServer, *names: str) -> int:
    return len(server.matching(lambda line: line.get("event") in names))


def test_a_first_install_then_a_deploy_and_a_rollback_each_serve_their_code() -> None:
    with _root() as root:
        one = _release(root, "2026-12-01-1", GOOD.format(text="one"))
        two = _release(root, "2026-12-02-1", GOOD.format(text="two"))
        first = _deploy(root, "--no-reload", str(one))
        assert first.returncode == 0, first.stderr
        assert os.readlink(root / "project") == str(one)
        assert not (root / "project.previous").exists()  # nothing was replaced
        with _serving(root) as fnd:
            assert fnd.get("/hello").text == "one"
            done = _deploy(root, str(two), control=fnd.control)
            assert done.returncode == 0, done.stderr
            assert f"deployed {two}" in done.stdout
            assert fnd.get("/hello").text == "two"
            assert os.readlink(root / "project") == str(two)
            assert os.readlink(root / "project.previous") == str(one)

            back = _deploy(root, "--rollback", control=fnd.control)
            assert back.returncode == 0, back.stderr
            assert fnd.get("/hello").text == "one"
            assert os.readlink(root / "project") == str(one)
            assert os.readlink(root / "project.previous") == str(two)  # --rollback again: two


def test_a_release_the_reload_refuses_is_switched_back_and_the_old_code_keeps_serving() -> None:
    with _root() as root:
        one = _release(root, "2026-12-01-1", GOOD.format(text="one"))
        broken = _release(root, "2026-12-02-1", BOOT_FAILS)
        assert _deploy(root, "--no-reload", str(one)).returncode == 0
        with _serving(root) as fnd:
            failed = _deploy(root, str(broken), control=fnd.control)
            assert failed.returncode == 1
            assert "fnd: reload failed: 1 problem(s)" in failed.stderr, failed.stderr
            assert "/hello: error loading functions/hello.py: RuntimeError: no database" in \
                failed.stderr
            assert (f"deploy failed: the daemon refused {broken}; switched back to {one}; "
                    "the previous code keeps serving") in failed.stderr
            assert os.readlink(root / "project") == str(one)
            assert not (root / "project.previous").exists()
            assert fnd.get("/hello").text == "one"
            assert fnd.status()["project"] == str(one)
        with _serving(root) as restarted:  # a restart starts on the link: the code that served
            assert restarted.get("/hello").text == "one"


def test_a_release_with_problems_changes_nothing_and_names_each() -> None:
    with _root() as root:
        one = _release(root, "2026-12-01-1", GOOD.format(text="one"))
        bad = _release(root, "2026-12-02-1", BROKEN_SYNTAX)
        (bad / ".env").chmod(0o644)
        (bad / "functions" / "slow.py").chmod(0o600)
        assert _deploy(root, "--no-reload", str(one)).returncode == 0
        with _serving(root) as fnd:
            reloads = _events(fnd, "reloaded", "reload failed")
            refused = _deploy(root, str(bad), control=fnd.control)
            assert refused.returncode == 1
            lines = refused.stderr.splitlines()
            assert lines[0] == f"fnd: deploy refused: 3 problem(s) in {bad}", refused.stderr
            assert "  functions/hello.py:1: SyntaxError: expected ':'" in lines
            assert f"  .env is mode 0644: its secrets are readable by others; chmod 0600 " \
                   f"{bad / '.env'}" in lines
            assert any("slow.py: not readable by worker uid" in line for line in lines)
            assert lines[-1] == f"fnd: nothing changed: {root / 'project'} still points at {one}"
            assert os.readlink(root / "project") == str(one)
            assert fnd.get("/hello").text == "one"
            assert _events(fnd, "reloaded", "reload failed") == reloads  # never asked


def test_a_daemon_serving_another_folder_is_not_deployed_behind_its_back() -> None:
    with _root() as root:
        one = _release(root, "2026-12-01-1", GOOD.format(text="one"))
        two = _release(root, "2026-12-02-1", GOOD.format(text="two"))
        assert _deploy(root, "--no-reload", str(one)).returncode == 0
        with _serving(root) as fnd:
            # --link names another symlink than the one this daemon was started on.
            other = _deploy(root, "--link", "shop", str(two), control=fnd.control)
            assert other.returncode == 1
            assert f"serves {one}, not {root / 'shop'}" in other.stderr, other.stderr
            assert not (root / "shop").exists()
            assert fnd.get("/hello").text == "one"


def test_a_real_folder_at_the_link_is_refused_and_left_as_it_is() -> None:
    with _root() as root:
        one = _release(root, "2026-12-01-1", GOOD.format(text="one"))
        shutil.copytree(FIXTURES / "ops", root / "project")
        before = sorted(p.name for p in (root / "project").rglob("*"))
        refused = _deploy(root, "--no-reload", str(one))
        assert refused.returncode == 1
        assert (f"{root / 'project'} is a folder, not a symlink: fnd deploy switches a symlink "
                "and never replaces a folder") in refused.stderr, refused.stderr
        assert f"mv {root / 'project'} {root / 'releases' / 'project-first'}" in refused.stderr
        assert (root / "project").is_dir() and not (root / "project").is_symlink()
        assert sorted(p.name for p in (root / "project").rglob("*")) == before
        assert sorted(p.name for p in root.iterdir()) == ["project", "releases"]


def test_without_a_daemon_or_a_previous_release_nothing_is_changed() -> None:
    with _root() as root:
        one = _release(root, "2026-12-01-1", GOOD.format(text="one"))
        two = _release(root, "2026-12-02-1", GOOD.format(text="two"))
        assert _deploy(root, "--no-reload", str(one)).returncode == 0
        nobody = _deploy(root, str(two), control=str(root / "control.sock"))
        assert nobody.returncode == 4
        assert f"no daemon answers on {root / 'control.sock'}" in nobody.stderr
        assert "fnd deploy --no-reload" in nobody.stderr
        assert os.readlink(root / "project") == str(one)
        rollback = _deploy(root, "--rollback", "--no-reload")
        assert rollback.returncode == 1
        assert f"nothing to roll back to: {root / 'project.previous'} does not exist" in \
            rollback.stderr
        assert os.readlink(root / "project") == str(one)
        assert sorted(p.name for p in root.iterdir()) == ["project", "releases"]


def test_the_pages_deploy_and_rollback_blocks_work_as_written() -> None:
    """docs/operating.md's marked deploy and rollback steps, run by bash with only their
    paths moved under ROOT (and the daemon named: the default control socket is not ours)."""
    blocks = {step: found[0] for step, found in vm_blocks().items()}
    with _root() as root:
        one = _release(root, "2026-12-01-1", GOOD.format(text="one"))
        example = _release(root, "example", GOOD.format(text="two"))  # the page's examples/hello
        shutil.copy2(example / ".env", example / ".env.example")
        assert _deploy(root, "--no-reload", str(one)).returncode == 0
        with _serving(root) as fnd:
            moved = {"/usr/local/src/fnd/examples/hello": str(example), "/srv/fnd": str(root),
                     "fnd deploy ": f"fnd deploy --root {root} --control {fnd.control} "}

            def run(block: str) -> subprocess.CompletedProcess[str]:
                for old, new in moved.items():
                    block = block.replace(old, new)
                return subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", block], capture_output=True, text=True,
                    timeout=600, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})

            deployed = run(blocks["deploy"])
            assert deployed.returncode == 0, deployed.stderr
            two = root / "releases" / "2026-12-02-1"
            assert os.readlink(root / "project") == str(two)
            assert (two / ".env").stat().st_mode & 0o777 == 0o600
            assert fnd.get("/hello").text == "two"
            rolled = run(blocks["rollback"])
            assert rolled.returncode == 0, rolled.stderr
            assert os.readlink(root / "project") == str(one)
            assert fnd.get("/hello").text == "one"


def test_a_served_project_folder_becomes_the_first_release_as_the_refusal_says() -> None:
    with _root() as root:
        folder = _release(root, "staged", GOOD.format(text="folder"))
        folder.rename(root / "project")  # an install from before fnd deploy: a real folder
        with _serving(root) as fnd:
            refused = _deploy(root, str(_release(root, "2026-12-02-1", GOOD.format(text="x"))),
                              control=fnd.control)
            assert refused.returncode == 1
            first = root / "releases" / "project-first"
            command = f"mv {root / 'project'} {first} && fnd deploy --root {root} {first}"
            assert command in refused.stderr, refused.stderr
            (root / "project").rename(first)
            done = _deploy(root, str(first), control=fnd.control)
            assert done.returncode == 0, done.stderr
            assert os.readlink(root / "project") == str(first)
            assert fnd.status()["project"] == str(first)
            assert fnd.get("/hello").text == "folder"
