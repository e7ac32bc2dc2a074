"""`fnd deps PROJECT`: install the project's requirements.txt into ``.fnd/deps/<hash>`` with pip
(docs/handlers.md#python-packages).

requirements.txt is checked by fnd first (:mod:`fnd.ctl.deps_requirements`), and pip runs as
an unprivileged uid in a sandbox (:mod:`fnd.ctl.deps_sandbox`), wheels only unless the
operator allows sdists. The folder is built next to where it goes (same filesystem), through
directory handles only (:mod:`fnd.ctl.deps_folders`), and renamed into place, so a daemon
never sees half of it. Packages fnd itself runs on are never installed twice: the worker has
them imported before the project's folder is on its path, so a second copy at another version
would be half used. A requirement asking for another version of one of them is refused; one
that resolves to fnd's own version is removed from the folder (fnd's copy serves); any other
way of bringing one of fnd's modules is refused (:mod:`fnd.ctl.deps_checks`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from fnd.ctl import deps_checks, deps_folders, deps_sandbox
from fnd.ctl.deps_folders import FolderError
from fnd.ctl.deps_requirements import (
    Checked,
    RequirementsError,
    Sources,
    check,
    read_project_file,
)
from fnd.daemon.deps_folder import (
    MANIFEST,
    REQUIREMENTS,
    deps_hash,
    fnd_runtime_versions,
    interpreter_tag,
    normalize,
    stale_shared,
)
from fnd.daemon.http.safe_open import open_beneath

_PIP_TAIL = 15  # lines of pip's output shown when it fails
BUILD_TIMEOUT = 1800.0  # seconds pip may take, downloads and builds included
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

Say = Callable[[str], None]


class DepsError(Exception):
    """fnd deps cannot do its job; the message is the one line the user sees."""


def _root(project: Path) -> Path:
    try:
        root = project.resolve(strict=True)
    except OSError as exc:
        raise DepsError(f"project folder {project} cannot be read: {exc.strerror}") from None
    if not root.is_dir():
        raise DepsError(f"project folder {project} is not a directory")
    return root


def install(project: Path, say: Say = print, sources: Sources | None = None) -> None:
    """Make ``.fnd/deps/<hash>`` match requirements.txt; raises DepsError."""
    root = _root(project)
    root_fd = os.open(root, _DIR)
    try:
        _install(root, root_fd, say, sources or Sources())
    except (RequirementsError, FolderError, deps_sandbox.BuildError,
            deps_checks.ShadowError) as exc:
        raise DepsError(str(exc)) from None
    finally:
        os.close(root_fd)


def _install(root: Path, root_fd: int, say: Say, sources: Sources) -> None:
    try:
        requirements = read_project_file(root_fd, REQUIREMENTS)
    except FileNotFoundError:
        say(f"no {REQUIREMENTS} in {root}: nothing to install")
        return
    digest = deps_hash(requirements)
    shown = f".fnd/deps/{digest}"
    runtime = fnd_runtime_versions()
    with _deps_dir(root, root_fd, create=False) as existing:
        manifest = None if existing is None else _manifest(existing, digest)
    if manifest is not None and not stale_shared(manifest, runtime):
        say(f"up to date: {shown}")
        return
    checked = check(root_fd, requirements)
    _refuse_pinned_conflicts(checked, runtime)
    if importlib.util.find_spec("pip") is None:
        raise DepsError(f"pip is not installed for {sys.executable}, and fnd deps installs with "
                        f"it: {sys.executable} -m ensurepip adds it")
    with _deps_dir(root, root_fd, create=True) as deps_fd:
        assert deps_fd is not None
        layers = deps_sandbox.prepare(sources.local_paths(), [str(root)])
        with deps_sandbox.build_uid(str(root)) as uid, \
                deps_sandbox.private_folder(uid) as private:
            name, build_fd = deps_folders.make_build_dir(deps_fd, f".tmp-{digest[:12]}-", uid)
            try:
                say(f"installing {REQUIREMENTS} into {shown} (pip, "
                    f"{'as uid ' + str(uid) if uid is not None else 'as this user'}, sandboxed)")
                _pip(checked, runtime, sources, layers, uid, private, build_fd)
                deps_folders.settle(build_fd)
                # The build folder by its handle: no lookup from the project down again.
                target = Path(f"/proc/self/fd/{build_fd}")
                installed, shared = _drop_fnd_packages(target, runtime)
                _write_manifest(build_fd, requirements, installed, shared)
                try:
                    deps_folders.swap_in(deps_fd, name, digest)
                except OSError:
                    if _manifest(deps_fd, digest) is None:  # not another fnd deps first
                        raise
            finally:
                os.close(build_fd)
                deps_folders.remove(deps_fd, name)
    listed = ", ".join(f"{name} {version}" for name, version in sorted(installed.items()))
    say(f"installed: {shown} ({listed or 'no packages'})")
    if shared:
        say("  served by fnd's own copy: "
            + ", ".join(f"{name} {version}" for name, version in sorted(shared.items())))


@contextlib.contextmanager
def _deps_dir(root: Path, root_fd: int, create: bool) -> Iterator[int | None]:
    """A handle on .fnd/deps (made when ``create``), never through a symlink."""
    fnd_fd = deps_folders.open_dir(root_fd, ".fnd", f"{root}/.fnd", create)
    if fnd_fd is None:
        yield None
        return
    try:
        deps_fd = deps_folders.open_dir(fnd_fd, "deps", f"{root}/.fnd/deps", create)
        try:
            yield deps_fd
        finally:
            if deps_fd is not None:
                os.close(deps_fd)
    finally:
        os.close(fnd_fd)


def _manifest(deps_fd: int, digest: str) -> dict[str, object] | None:
    """The finished folder's record, read without following a symlink; None when absent."""
    try:
        fd = open_beneath(deps_fd, f"{digest}/{MANIFEST}")
    except (OSError, ValueError):
        return None
    try:
        data = json.loads(os.read(fd, 1 << 20))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def prune(project: Path, say: Say = print) -> None:
    """Remove every folder under .fnd/deps that the current requirements.txt does not use.

    Run it after the reload that switched to the new folder: workers of the old generation
    still import from theirs until then.
    """
    root = _root(project)
    root_fd = os.open(root, _DIR)
    try:
        try:
            current: str | None = deps_hash(read_project_file(root_fd, REQUIREMENTS))
        except FileNotFoundError:
            current = None
        removed = 0
        with _deps_dir(root, root_fd, create=False) as deps_fd:
            for name in deps_folders.entries(deps_fd) if deps_fd is not None else []:
                if name == current:
                    continue
                assert deps_fd is not None
                deps_folders.remove(deps_fd, name)
                removed += 1
                say(f"removed: .fnd/deps/{name}")
    except (RequirementsError, FolderError) as exc:
        raise DepsError(str(exc)) from None
    finally:
        os.close(root_fd)
    if not removed:
        say("nothing to prune")


def _refuse_pinned_conflicts(checked: Checked, runtime: dict[str, str]) -> None:
    """Refuse, before anything is downloaded, a line asking for another version of a package
    fnd runs on."""
    for line in [*checked.requirements, *checked.constraints]:
        requirement = line.requirement
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue  # not for this interpreter: pip skips it too
        name = normalize(requirement.name)
        ours = runtime.get(name)
        if ours is not None and not requirement.specifier.contains(ours, prereleases=True):
            raise DepsError(_conflict(name, str(requirement.specifier), ours))


def _conflict(name: str, theirs: str, ours: str) -> str:
    return (f"{REQUIREMENTS} asks for {name}{theirs}, but fnd itself runs on {name} {ours}: "
            f"a project cannot replace one of fnd's own packages (use {name}=={ours}, or "
            "leave it out: functions can import fnd's copy)")


def _pip(checked: Checked, runtime: dict[str, str], sources: Sources,
         layers: deps_sandbox.Layers, uid: int | None, private: str, build_fd: int) -> None:
    """pip, in the build sandbox, on the files fnd wrote; raises DepsError when it fails."""
    inputs = {
        "requirements.txt": checked.requirements_file(),
        # Constraints: a dependency fnd also has resolves to fnd's version, so a project
        # asking for `requests` does not get a newer urllib3 than fnd's and a needless refusal.
        "fnd-constraints.txt": "".join(f"{name}=={version}\n"
                                       for name, version in sorted(runtime.items())
                                       if name != "fnd"),
        "project-constraints.txt": checked.constraints_file(),
    }
    for name, text in inputs.items():
        fd = os.open(os.path.join(private, name),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with open(fd, "w") as file:
            os.fchmod(fd, 0o644)
            file.write(text)
    command = [sys.executable, "-m", "pip", "install",
               "--target", f"/proc/self/fd/{build_fd}",
               "--requirement", os.path.join(private, "requirements.txt"),
               "--constraint", os.path.join(private, "fnd-constraints.txt"),
               "--constraint", os.path.join(private, "project-constraints.txt"),
               "--no-input", "--disable-pip-version-check", "--no-warn-script-location",
               "--no-cache-dir", *sources.pip_args()]
    result = deps_sandbox.run(command, layers, uid, private, build_fd, BUILD_TIMEOUT)
    if result.returncode == 0:
        return
    lines = [line for line in result.output.splitlines()
             if line.strip() and "is ignored: it is neither" not in line]
    tail = "\n".join(f"  pip: {line}" for line in lines[-_PIP_TAIL:])
    why = ""
    if "(constraint)" in result.output:
        why = (": a requirement needs another version of a package fnd itself runs on "
               "(pip's '(constraint)' lines are fnd's versions)")
    elif "No matching distribution" in result.output and not sources.allow_sdist:
        why = (": fnd deps installs wheels only; a package published only as source (sdist) "
               "needs the operator's fnd deps --allow-sdist")
    raise DepsError(f"pip could not install {REQUIREMENTS} (exit {result.returncode})"
                    f"{why}; nothing was changed\n{tail}")


def _drop_fnd_packages(
    target: Path, runtime: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Remove the distributions fnd has too (same version); refuse another version, and any
    other way the folder brings one of fnd's modules. Returns (kept, removed) as
    {normalized name: version}."""
    kept: dict[str, str] = {}
    shared: dict[str, str] = {}
    for info, name, version in deps_checks.distributions(target):
        key = normalize(name)
        ours = runtime.get(key)
        if ours is None:
            kept[key] = version
        elif ours == version:
            deps_checks.uninstall(target, info)
            shared[key] = version
        else:
            raise DepsError(_conflict(key, f" {version} (as pip resolved it)", ours))
    deps_checks.refuse_shadowing(target, runtime)
    return kept, shared


def _write_manifest(build_fd: int, requirements: bytes, installed: dict[str, str],
                    shared: dict[str, str]) -> None:
    text = json.dumps({
        "requirements_sha256": hashlib.sha256(requirements).hexdigest(),
        "interpreter": interpreter_tag(),
        "installed": installed,
        "shared": shared,  # left to fnd's copy: the folder is stale once these change
    }, indent=2, sort_keys=True) + "\n"
    fd = os.open(MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644, dir_fd=build_fd)
    with open(fd, "w") as file:
        os.fchmod(fd, 0o644)  # whatever the umask: worker uids read it
        file.write(text)
