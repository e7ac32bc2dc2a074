"""Run pip for `fnd deps` as an unprivileged, sandboxed build (docs/handlers.md#python-packages).

pip runs whatever a package's build asks (an sdist's setup.py), so it gets what a worker
gets and no more. As root, fnd claims a free block of uids the way a daemon claims its
workers' (:mod:`fnd.daemon.sandbox.uid_claim`: no live daemon holds it, no process runs as it) and
runs pip as its first uid, which is therefore neither root nor any project's worker uid.
The child forks, drops to that uid, sets no_new_privs, applies Landlock and the workers'
seccomp filter (network allowed), then execs pip: all three survive exec. Landlock grants
read-only the system folders, the interpreter and venv, the input files fnd wrote and the
folders the operator's sources name, and read-write only the build folder and a private
temporary folder (HOME, TMPDIR). The environment is fnd's, not the caller's: the caller's
proxy variables only. A layer that cannot be applied stops the build before pip starts.

After pip, every process of the build uid is killed (``kill(-1)`` as that uid), so nothing
the build started outlives it. Without root, pip runs as the caller, still under Landlock
and seccomp.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from fnd.daemon.sandbox import uid_claim
from fnd.worker.sandbox import landlock, paths, seccomp
from fnd.worker.sandbox.identity import die_with_parent, drop_to, no_new_privs
from fnd.worker.sandbox.process import close_fds

OUTPUT_TAIL = 64 * 1024  # bytes of pip's output kept (its last lines are shown on failure)
HIDDEN = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/root")
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                   "NO_PROXY")
LIMITS = (  # soft == hard; generous for a build, but bounded
    (resource.RLIMIT_CORE, 0),
    (resource.RLIMIT_NOFILE, 4096),
    (resource.RLIMIT_NPROC, 512),
    (resource.RLIMIT_FSIZE, 4 << 30),
    (resource.RLIMIT_DATA, 8 << 30),
    (resource.RLIMIT_CPU, 3600),
)


class BuildError(Exception):
    """The build sandbox could not be set up, or pip did not finish; one line for the user."""


@dataclass(frozen=True)
class Result:
    returncode: int
    output: str
    uid: int | None  # the uid pip ran as (None: the caller's own)


@dataclass(frozen=True)
class Layers:
    """Built before forking: the Landlock plan and the compiled seccomp filter."""

    plan: landlock.Plan
    seccomp: seccomp.Filter


def prepare(read_only: list[str], hidden: list[str]) -> Layers:
    """Plan the layers; raises BuildError when one of them cannot be had on this host."""
    abi = landlock.abi_version()
    if not abi:
        raise BuildError("the build sandbox needs Landlock (Linux 5.13+ with lsm=landlock), "
                         "and fnd deps does not run pip without it")
    try:
        flt = seccomp.build(network=True)
    except (ImportError, OSError, ValueError) as exc:
        raise BuildError(f"the build sandbox cannot compile its seccomp filter ({exc}), and "
                         "fnd deps does not run pip without it") from None
    granted = paths.readable(read_only, [*HIDDEN, *hidden], "")
    plan = landlock.make_plan(abi, granted + list(paths.DEVICES_READ_ONLY),
                              list(paths.DEVICES_READ_WRITE), network=True, tcp_bind=False)
    return Layers(plan, flt)


@contextlib.contextmanager
def build_uid(project: str) -> Iterator[int | None]:
    """A uid no daemon's workers use and no process runs as, held for the build; None when
    fnd deps does not run as root (pip then runs as the caller)."""
    if os.geteuid() != 0:
        yield None
        return
    try:
        claim = uid_claim.claim(None, 1, project, "fnd deps (build)")
    except (uid_claim.UidRangeTaken, OSError) as exc:
        raise BuildError(f"no uid for the build: {exc}") from None
    try:
        yield claim.first
    finally:
        claim.release()


@contextlib.contextmanager
def private_folder(uid: int | None) -> Iterator[str]:
    """A fresh folder in /tmp for pip's HOME and TMPDIR, owned by the build uid; removed
    after (every process of that uid is gone by then)."""
    top = tempfile.mkdtemp(prefix="fnd-deps-build-", dir="/tmp")  # not the caller's TMPDIR
    try:
        for sub in ("home", "tmp"):
            os.mkdir(os.path.join(top, sub), 0o700)
        if uid is not None:
            for sub in ("home", "tmp", ""):
                os.chown(os.path.join(top, sub), uid, uid, follow_symlinks=False)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def run(argv: list[str], layers: Layers, uid: int | None, private: str, target_fd: int,
        timeout: float) -> Result:
    """Run ``argv`` (pip) in the sandbox, with ``/proc/self/fd/<target_fd>`` as its one
    writable folder besides ``private``; returns its exit status and output."""
    env = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
           "HOME": os.path.join(private, "home"), "TMPDIR": os.path.join(private, "tmp"),
           "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1", "PIP_NO_INPUT": "1"}
    env.update((k, v) for k, v in os.environ.items() if k in PROXY_VARIABLES)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which execs or exits
        _child(argv, env, layers, uid, private, target_fd, out_w, err_w, parent)
    os.close(out_w)
    os.close(err_w)
    try:
        code, output = _wait(pid, out_r, timeout)
    finally:
        stop_everything(uid, pid)
        os.close(out_r)
    failed = _read_all(err_r)
    os.close(err_r)
    if failed.startswith("exec:"):  # the interpreter is not readable by the build uid
        raise BuildError(f"pip could not start as uid {uid} ({failed}): run fnd deps with the "
                         "venv fnd serves from, built from /usr/bin/python3 in a world-readable "
                         "place (docs/operating.md)")
    if failed:
        raise BuildError(f"the build sandbox could not be set up, pip did not run: {failed}")
    if code is None:
        raise BuildError(f"pip did not finish within {timeout:.0f} s and was stopped")
    return Result(code, output, uid)


def _child(argv: list[str], env: dict[str, str], layers: Layers, uid: int | None,
           private: str, target_fd: int, out_w: int, err_w: int,
           parent: int) -> None:  # pragma: no cover - runs in the forked child
    step = "start"
    try:
        step = "session and fds"
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        close_fds((err_w, target_fd))
        os.set_inheritable(target_fd, True)
        os.umask(0o022)
        os.chdir(os.path.join(private, "tmp"))
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # CPython ignores them; exec keeps that
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        step = "rlimits"
        for which, value in LIMITS:
            hard = resource.getrlimit(which)[1]
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
        if uid is not None:
            step = f"dropping to uid {uid}"
            drop_to(uid, uid)
        step = "parent-death signal"
        if not die_with_parent(parent):
            os._exit(1)
        step = "no_new_privs"
        no_new_privs()
        step = "landlock"
        landlock.enforce(layers.plan, [private, f"/proc/self/fd/{target_fd}"], [])
        step = "seccomp"
        layers.seccomp.load()
        step = "exec"
        os.execve(argv[0], argv, env)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
        with contextlib.suppress(OSError):
            os.write(err_w, f"{step}: {exc}".encode()[:2000])
    finally:
        os._exit(127)


def _wait(pid: int, out_r: int, timeout: float) -> tuple[int | None, str]:
    """pip's exit status (None: killed at the deadline) and the tail of its output."""
    pidfd = os.pidfd_open(pid)
    tail = bytearray()
    deadline = time.monotonic() + timeout
    code: int | None = None
    try:
        open_out = True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            ready, _, _ = select.select([pidfd, *([out_r] if open_out else [])], [], [], left)
            if out_r in ready:
                chunk = os.read(out_r, 65536)
                open_out = bool(chunk)
                tail += chunk
                del tail[:-OUTPUT_TAIL]
            if pidfd in ready:
                code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                break
    finally:
        os.close(pidfd)
    return code, _drain(out_r, tail)


def _drain(out_r: int, tail: bytearray) -> str:
    """What pip wrote last, up to the pipe's end (the build's other processes are killed
    right after pip exits; a grace second covers a writer still finishing)."""
    deadline = time.monotonic() + 1.0
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([out_r], [], [], left)
        if not ready:
            break
        chunk = os.read(out_r, 65536)
        if not chunk:
            break
        tail += chunk
        del tail[:-OUTPUT_TAIL]
    return tail.decode("utf-8", "replace")


def stop_everything(uid: int | None, pid: int) -> None:
    """Kill every process the build left: as root, every process of the build uid (a
    process of that uid sends ``kill(-1, SIGKILL)``, which reaches exactly the processes
    it may signal, until /proc shows none alive); otherwise pip's session."""
    if uid is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return
    for _ in range(200):  # each round kills all there are; only a fork racing it survives
        killer = os.fork()
        if killer == 0:  # pragma: no cover - runs in the child
            try:
                drop_to(uid, uid)
                for _ in range(3):
                    os.kill(-1, signal.SIGKILL)  # never ESRCH: it counts refused targets too
            finally:
                os._exit(0)
        os.waitpid(killer, 0)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _live_processes(uid):
            return
        time.sleep(0.005)  # SIGKILLed processes are gone once the kernel has run them
    raise BuildError(f"processes of the build uid {uid} could not be stopped")


def _live_processes(uid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{name}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
            if int(fields["Uid"].split()[1]) == uid and not fields["State"].strip() \
                    .startswith("Z"):
                found.append(int(name))
    return found


def _read_all(fd: int) -> str:
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    return data.decode("utf-8", "replace").strip()
