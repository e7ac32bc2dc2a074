"""One test per escape attempt, each asserting the exact outcome
(docs/sandbox.md#what-a-function-cannot-do).

Each test forks a child, sandboxes it the way the zygote does (setsid, then apply() with a
filter prepared once in the parent), runs one attempt in it and reports the errno back over
a pipe. Runs as root (CI does): the uid drop and the cgroups are part of what is tested.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest

from fnd.daemon.sandbox import uid_claim
from fnd.daemon.sandbox.cgroups import Cgroups
from fnd.protocol.sandbox_config import LAYERS, MiB, default_data_bytes, missing_layers
from fnd.worker import sandbox
from fnd.worker.sandbox import seccomp as seccomp_module
from fnd.worker.sandbox.libc import PR_GET_DUMPABLE, PR_GET_NO_NEW_PRIVS, libc, prctl, syscall
from tests.cgroup_wait import wait_empty
from tests.processes import reap

pytestmark = pytest.mark.root_only  # worker uids, cgroups, mounts

SLOT = 5
UID = 61000 + SLOT  # until the env fixture has claimed a free range, as a daemon does
MEMORY = 256 * MiB
FSIZE = 1 * MiB
NOFILE = 64
PIDS = 32
DEADLINE = 30.0
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PTRACE_ATTACH = 16
PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Env:
    root: str
    project: str
    scratch_root: str
    cgroups: Cgroups
    settings: dict[str, Any]
    prepared: sandbox.Prepared


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    assert os.geteuid() == 0, "the sandbox tests must run as root (CI does)"
    root = tempfile.mkdtemp(prefix="fnd-sandbox-test-", dir="/tmp")
    os.chmod(root, 0o711)
    project = os.path.join(root, "project")
    for sub in ("functions", "assets"):
        os.makedirs(os.path.join(project, sub))
    _write(os.path.join(project, ".env"), "AUTH_TOKEN=secret\n")
    _write(os.path.join(project, "fnd.toml"), "sandbox = 'strict'\n")
    _write(os.path.join(project, "functions", "hello.py"), "def handler(c, e, cb): cb(None)\n")
    _write(os.path.join(project, "assets", "style.css"), "body {}\n")
    for directory, _dirs, files in os.walk(project):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    scratch_root = os.path.join(root, "scratch")
    cg = Cgroups.create(memory_bytes=MEMORY, pids_max=PIDS, name=f"fnd-test-{os.getpid()}")
    # Worker uids no daemon and no process (a zombie of an earlier test, say) is using: they
    # share RLIMIT_NPROC with anything else of theirs.
    uids = uid_claim.claim(None, SLOT + 2, project=__file__, control="")
    global UID
    UID = uids.first + SLOT
    settings: dict[str, Any] = {
        "mode": "strict",
        "uid_base": uids.first,
        "memory_bytes": MEMORY,
        "pids_max": PIDS,
        "nofile": NOFILE,
        "fsize_bytes": FSIZE,
        "cpu_seconds": 60,
        "project_dir": project,
        "scratch_root": scratch_root,
        "cgroup_dirs": cg.dir_templates(),
    }
    cg.slot_dirs(SLOT)
    prepared = sandbox.prepare(settings)
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # the sandboxed children's orphans come back to us
    try:
        yield Env(root, project, scratch_root, cg, settings, prepared)
    finally:
        prctl(PR_SET_CHILD_SUBREAPER, 0)
        left = cg.cleanup()
        uids.release()
        shutil.rmtree(root, ignore_errors=True)
        assert left == []


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def write(path: str, text: str = "x") -> None:
    with open(path, "w") as f:
        f.write(text)


def outcome(attempt: Callable[[], object]) -> str:
    """ "ok", the errno name of an OSError, or the exception's type name."""
    try:
        attempt()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    except BaseException as exc:  # noqa: BLE001 - every outcome is reported
        return type(exc).__name__
    return "ok"


def _inherited_data() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def run_sandboxed(
    env: Env, attempt: Callable[[], object], **overrides: Any
) -> tuple[dict[str, str], Any]:
    """Fork, sandbox the child as the zygote would, run ``attempt`` there; (report, result)."""
    settings = {**env.settings, **overrides}
    if "data_bytes" not in overrides:
        # RLIMIT_DATA counts what the child inherits. The real zygote is small; this parent is
        # pytest, grown by the whole suite (other threads' stacks, caches): the child gets the
        # limit a worker gets, on top of what it inherits.
        settings["data_bytes"] = default_data_bytes(MEMORY) + _inherited_data()
    prepared = env.prepared if not overrides else sandbox.prepare(settings)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the sandboxed child
        try:
            os.close(r)
            os.setsid()
            message: dict[str, Any] = {}
            try:
                message["report"] = sandbox.apply(settings, SLOT, (w,), prepared)
                message["result"] = attempt()
            except sandbox.SandboxError as exc:
                message = {"error": str(exc)}
            except BaseException as exc:  # noqa: BLE001 - reported to the test
                message = {"error": f"attempt raised {exc!r}"}
            os.write(w, json.dumps(message).encode() + b"\n")
        finally:
            os._exit(0)
    os.close(w)
    status = -1
    try:
        data = _read_line(r, DEADLINE)
    finally:
        os.close(r)
        status = reap(pid, DEADLINE)
        _kill_leftovers(env)
    assert data, f"the sandboxed child reported nothing (wait status {status:#x})"
    message = json.loads(data)
    if "error" in message:
        return {"error": message["error"]}, None
    return message["report"], message["result"]


def _kill_leftovers(env: Env) -> None:
    """Kill what the child left in its cgroup (setsid'd grandchildren included) and reap it:
    the test process is a child subreaper, so orphans are ours to reap. Until they are reaped
    they still count against the slot's pids.max and the uid's RLIMIT_NPROC."""
    leftovers = env.cgroups.pids(SLOT)
    env.cgroups.kill_slot(SLOT)
    for pid in leftovers:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    assert wait_empty(env.cgroups, SLOT)


def _read_line(fd: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]



def run(env: Env, attempt: Callable[[], object], **overrides: Any) -> Any:
    report, result = run_sandboxed(env, attempt, **overrides)
    assert "error" not in report, report
    return result


# --- the report ----------------------------------------------------------------------------


def test_report_lists_every_layer(env: Env) -> None:
    report, _ = run_sandboxed(env, lambda: None)
    assert set(LAYERS) <= set(report), report
    assert missing_layers(report) == []
    assert report["uid"] == str(UID)
    assert report["cgroup"] == env.cgroups.describe().replace("v2 memory+pids", "v2")
    assert report["landlock"].startswith("abi ")
    assert report["seccomp"] == "on"
    assert report["network"] == "allowed"
    assert report["scratch"] == os.path.join(env.scratch_root, f"slot-{SLOT}")


def test_identity_and_flags_in_the_child(env: Env) -> None:
    def probe() -> dict[str, object]:
        return {
            "uid": os.getresuid(),
            "gid": os.getresgid(),
            "groups": os.getgroups(),
            "dumpable": prctl(PR_GET_DUMPABLE),
            "nnp": prctl(PR_GET_NO_NEW_PRIVS),
            "sid": os.getsid(0) == os.getpid(),
            "cwd": os.getcwd(),
            "tmpdir": tempfile.gettempdir(),
        }

    result = run(env, probe)
    scratch = os.path.join(env.scratch_root, f"slot-{SLOT}")
    assert result == {
        "uid": [UID] * 3,
        "gid": [UID] * 3,
        "groups": [],
        "dumpable": 0,
        "nnp": 1,
        "sid": True,
        "cwd": scratch,
        "tmpdir": scratch,
    }


def test_rlimits_soft_equals_hard(env: Env) -> None:
    names = ("RLIMIT_CORE", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_CPU")
    result = run(env, lambda: {n: resource.getrlimit(getattr(resource, n)) for n in names})
    assert result == {
        "RLIMIT_CORE": [0, 0],
        "RLIMIT_NOFILE": [NOFILE, NOFILE],
        "RLIMIT_FSIZE": [FSIZE, FSIZE],
        "RLIMIT_NPROC": [PIDS, PIDS],
        "RLIMIT_CPU": [60, 60],
    }


def test_child_is_in_its_cgroups(env: Env) -> None:
    def cgroups() -> str:
        with open("/proc/self/cgroup") as f:
            return f.read()

    text = run(env, cgroups)
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers in ("memory", "pids", "freezer", "cpuacct", ""):
            if controllers == "" and env.cgroups.layout.version != "v2":
                continue
            assert path.endswith(f"/{env.cgroups.name}/slot-{SLOT}"), line


# --- files ---------------------------------------------------------------------------------


def test_read_etc_shadow_is_refused(env: Env) -> None:
    assert run(env, lambda: outcome(partial(read, "/etc/shadow"))) in ("EACCES", "EPERM")


def test_read_project_env_is_refused(env: Env) -> None:
    path = os.path.join(env.project, ".env")
    assert run(env, lambda: outcome(partial(read, path))) == "EACCES"


def test_read_project_fnd_toml_is_refused(env: Env) -> None:
    path = os.path.join(env.project, "fnd.toml")
    assert run(env, lambda: outcome(partial(read, path))) == "EACCES"


def test_list_project_root_is_refused(env: Env) -> None:
    assert run(env, lambda: outcome(lambda: os.listdir(env.project))) == "EACCES"


def test_functions_and_assets_are_readable(env: Env) -> None:
    fn = os.path.join(env.project, "functions", "hello.py")
    asset = os.path.join(env.project, "assets", "style.css")
    assert run(env, lambda: [outcome(partial(read, p)) for p in (fn, asset)]) == [
        "ok",
        "ok",
    ]


def test_write_outside_scratch_is_refused(env: Env) -> None:
    targets = [
        os.path.join(env.root, "escape.txt"),
        os.path.join(env.project, "functions", "evil.py"),
        "/tmp/fnd-escape.txt",
        "/etc/fnd-escape",
    ]
    result = run(env, lambda: [outcome(partial(write, t)) for t in targets])
    assert result == ["EACCES"] * len(targets)
    assert not any(os.path.exists(t) for t in targets)


def test_write_inside_scratch_works(env: Env) -> None:
    def write() -> str:
        with open("note.txt", "w") as f:
            f.write("hello")
        with tempfile.NamedTemporaryFile(delete=True) as tmp:
            tmp.write(b"x")
        os.mkdir("sub")
        os.rename("note.txt", "sub/note.txt")
        with open("sub/note.txt") as f:
            return f.read()

    assert run(env, write) == "hello"


def test_scratch_starts_empty_for_the_next_worker(env: Env) -> None:
    def leave_mess() -> None:
        write("left-behind.txt")
        os.makedirs("deep/er")
        os.symlink("/etc", "deep/etc-link")

    run(env, leave_mess)
    assert run(env, lambda: sorted(os.listdir("."))) == []
    assert os.path.exists("/etc/passwd")  # the planted symlink was removed, not followed


def test_other_slots_scratch_is_refused(env: Env) -> None:
    other = os.path.join(env.scratch_root, "slot-99")
    os.makedirs(other, exist_ok=True)
    os.chmod(other, 0o777)
    try:
        result = run(env, lambda: outcome(partial(write, os.path.join(other, "x"))))
    finally:
        shutil.rmtree(other)
    assert result == "EACCES"


def test_parent_environ_is_refused(env: Env) -> None:
    parent = os.getpid()
    assert run(env, lambda: outcome(partial(read, f"/proc/{parent}/environ"))) == "EACCES"


def test_own_proc_status_is_readable(env: Env) -> None:
    assert run(env, lambda: outcome(partial(read, "/proc/self/status"))) == "ok"


def test_inherited_fds_are_closed(env: Env) -> None:
    secret = os.open(os.path.join(env.project, ".env"), os.O_RDONLY)  # inheritable on purpose
    os.set_inheritable(secret, True)
    try:
        assert run(env, lambda: outcome(lambda: os.read(secret, 100))) == "EBADF"
    finally:
        os.close(secret)


# --- privileges and other processes ----------------------------------------------------------


def test_setuid_root_is_refused(env: Env) -> None:
    assert run(env, lambda: outcome(lambda: os.setuid(0))) == "EPERM"


def test_ptrace_attach_parent_is_refused(env: Env) -> None:
    parent = os.getpid()

    def attach() -> None:
        syscall("ptrace", ctypes.c_long(PTRACE_ATTACH), ctypes.c_long(parent), None, None)

    assert run(env, lambda: outcome(attach)) == "EPERM"


@pytest.mark.parametrize("signo", [0, signal.SIGTERM])
def test_signal_parent_is_refused(env: Env, signo: int) -> None:
    parent = os.getpid()
    assert run(env, lambda: outcome(lambda: os.kill(parent, signo))) == "EPERM"


@contextlib.contextmanager
def _sleeper(uid: int) -> Iterator[int]:
    """A process outside the sandbox running as ``uid`` (another worker, say)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_signal_another_workers_uid_is_refused(env: Env) -> None:
    with _sleeper(UID + 1) as other:
        assert run(env, lambda: outcome(lambda: os.kill(other, signal.SIGTERM))) == "EPERM"


def test_signal_same_uid_outside_the_sandbox_is_refused_by_landlock_scope(env: Env) -> None:
    with _sleeper(UID) as other:
        assert run(env, lambda: outcome(lambda: os.kill(other, signal.SIGTERM))) == "EPERM"


def test_unshare_user_namespace_is_refused(env: Env) -> None:
    attempt = lambda: syscall("unshare", ctypes.c_int(CLONE_NEWUSER))  # noqa: E731
    assert run(env, lambda: outcome(attempt)) == "EPERM"


def test_clone_with_new_namespace_flags_is_refused(env: Env) -> None:
    def clone() -> str:
        flags = CLONE_NEWNET | signal.SIGCHLD
        pid = int(libc.syscall(ctypes.c_long(56), ctypes.c_ulong(flags), None, None, None, None))
        if pid == 0:
            os._exit(0)  # the filter let it through; the caller sees "ok"
        if pid > 0:
            os.waitpid(pid, 0)
            return "ok"
        return errno.errorcode[ctypes.get_errno()]

    if os.uname().machine != "x86_64":
        pytest.skip("raw clone numbering checked on x86_64 only")
    assert run(env, clone) == "EPERM"


def test_mount_is_refused(env: Env) -> None:
    def mount() -> None:
        if libc.mount(b"none", env.root.encode(), b"tmpfs", ctypes.c_ulong(0), None) != 0:
            raise OSError(ctypes.get_errno(), "mount")

    assert run(env, lambda: outcome(mount)) == "EPERM"


def test_bpf_is_refused(env: Env) -> None:
    attempt = lambda: syscall("bpf", ctypes.c_int(0), None, ctypes.c_uint(0))  # noqa: E731
    assert run(env, lambda: outcome(attempt)) == "EPERM"


def test_keyctl_is_refused(env: Env) -> None:
    def keyctl() -> None:
        syscall("keyctl", ctypes.c_int(0), ctypes.c_long(-3), ctypes.c_int(0))

    assert run(env, lambda: outcome(keyctl)) == "EPERM"


def test_netlink_socket_is_refused(env: Env) -> None:
    attempt = lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # noqa: E731
    assert run(env, lambda: outcome(attempt)) == "EPERM"


def test_packet_socket_is_refused(env: Env) -> None:
    attempt = lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # noqa: E731
    assert run(env, lambda: outcome(attempt)) == "EPERM"


# family -> a socket type it supports, so that without the filter the kernel would say "ok"
# (or EAFNOSUPPORT where the module is missing): the EPERM can only come from seccomp.
OTHER_FAMILIES = {0: socket.SOCK_STREAM, 15: socket.SOCK_RAW, 16: socket.SOCK_RAW,
                  17: socket.SOCK_RAW, 21: socket.SOCK_SEQPACKET, 29: socket.SOCK_RAW,
                  30: socket.SOCK_RDM, 31: socket.SOCK_RAW, 38: socket.SOCK_SEQPACKET,
                  40: socket.SOCK_STREAM, 41: socket.SOCK_DGRAM, 42: socket.SOCK_DGRAM,
                  43: socket.SOCK_STREAM, 44: socket.SOCK_RAW, 45: socket.SOCK_DGRAM,
                  46: socket.SOCK_STREAM, 255: socket.SOCK_STREAM}


def _raw_socket(family: int) -> None:
    fd = syscall("socket", ctypes.c_long(family), ctypes.c_long(socket.SOCK_STREAM),
                 ctypes.c_long(0))
    os.close(fd)


def _families() -> dict[str, object]:
    def pair(family: int) -> None:
        for end in socket.socketpair(family):
            end.close()

    return {
        "unix": outcome(lambda: socket.socket(socket.AF_UNIX).close()),
        "inet": outcome(lambda: socket.socket(socket.AF_INET).close()),
        "inet6": outcome(lambda: socket.socket(socket.AF_INET6).close()),
        "others": {str(family): outcome(lambda f=family, t=kind: socket.socket(f, t).close())
                   for family, kind in OTHER_FAMILIES.items()},
        "pairs": [outcome(lambda f=f: pair(f)) for f in (1, 2, 10, 30, 40)],
        # the kernel reads only the low 32 bits of the family
        "high bits": [outcome(lambda f=f: _raw_socket(f)) for f in
                      (40 | 1 << 32, 16 | 1 << 63, 1 | 1 << 32, 0xFFFFFFFF, -1)],
    }


@pytest.mark.parametrize("network", [True, False])
def test_only_unix_and_inet_families_are_allowed(env: Env, network: bool) -> None:
    inet = "ok" if network else "EPERM"
    assert run(env, _families, network=network) == {
        "unix": "ok",
        "inet": inet,
        "inet6": inet,
        "others": {str(family): "EPERM" for family in OTHER_FAMILIES},
        "pairs": ["ok", "EPERM", "EPERM", "EPERM", "EPERM"],
        # fails closed: a family with high bits set is refused even when its low bits are
        # AF_UNIX (no libc passes one)
        "high bits": ["EPERM"] * 5,
    }


def test_clone3_is_enosys(env: Env) -> None:
    attempt = lambda: syscall("clone3", None, ctypes.c_size_t(0))  # noqa: E731
    assert run(env, lambda: outcome(attempt)) == "ENOSYS"


def test_abstract_unix_socket_outside_the_sandbox_is_refused(env: Env) -> None:
    name = f"\0fnd-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(name)
    listener.listen(1)
    try:

        def connect() -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(name)

        assert run(env, lambda: outcome(connect)) == "EPERM"
    finally:
        listener.close()


# --- resources -----------------------------------------------------------------------------


def test_fork_bomb_is_stopped(env: Env) -> None:
    def bomb() -> list[object]:
        children = 0
        while children < 10 * PIDS:
            try:
                pid = os.fork()
            except OSError as exc:
                return [errno.errorcode[exc.errno or 0], children]
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children += 1
        return ["ok", children]

    result = run(env, bomb)
    assert result[0] == "EAGAIN"
    assert result[1] < PIDS


def test_memory_beyond_the_limit_is_a_memory_error(env: Env) -> None:
    def hog() -> list[object]:
        chunks: list[bytes] = []
        try:
            while len(chunks) < 64:
                chunks.append(b"x" * (16 * MiB))  # touched, so it really is resident
        except MemoryError:
            return ["MemoryError", len(chunks)]
        return ["ok", len(chunks)]

    # The limit exactly as a worker gets it: counted with what the child inherits, it stops
    # the hog before the slot's cgroup (whose charge includes the parent's copied pages) would.
    result = run(env, hog, data_bytes=default_data_bytes(MEMORY))
    assert result[0] == "MemoryError"
    assert result[1] * 16 * MiB < MEMORY


def test_one_huge_allocation_is_a_memory_error(env: Env) -> None:
    assert run(env, lambda: outcome(lambda: bytearray(MEMORY + 64 * MiB))) == "MemoryError"


def test_too_many_open_files_is_emfile(env: Env) -> None:
    def hoard() -> list[object]:
        fds: list[int] = []
        try:
            while len(fds) < 10 * NOFILE:
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            return [errno.errorcode[exc.errno or 0], len(fds)]
        return ["ok", len(fds)]

    result = run(env, hoard)
    assert result[0] == "EMFILE"
    assert result[1] < NOFILE


def test_writing_past_fsize_is_efbig(env: Env) -> None:
    def big() -> str:
        with open("big.bin", "wb", buffering=0) as f:
            f.write(b"x" * FSIZE)
            return outcome(lambda: f.write(b"x"))

    assert run(env, big) == "EFBIG"


# --- what must keep working ----------------------------------------------------------------


def test_threads_still_work(env: Env) -> None:
    def threads() -> int:
        done: list[int] = []
        workers = [threading.Thread(target=done.append, args=(i,)) for i in range(8)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        return len(done)

    assert run(env, threads) == 8


def test_subprocess_works(env: Env) -> None:
    assert run(env, lambda: subprocess.run(["/bin/true"], check=False).returncode) == 0


def test_everyday_runtime_calls_still_work(env: Env) -> None:
    """Lazy imports and the files they need: idna, DNS, CA certificates
    (docs/sandbox.md#the-layers)."""

    def everyday() -> dict[str, object]:
        import ssl

        with tempfile.TemporaryDirectory() as tmp:
            tmp_ok = tmp.startswith(os.getcwd())
        return {
            "idna": "bücher.example".encode("idna").decode(),
            "dns": socket.getaddrinfo("localhost", 80, socket.AF_INET)[0][4][0],
            # AI_ADDRCONFIG makes glibc ask netlink, which is refused: it must fall back
            "addrconfig": "127.0.0.1" in {a[4][0] for a in socket.getaddrinfo(
                "localhost", 80, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG)},
            "ca": ssl.create_default_context().cert_store_stats()["x509_ca"] > 0,
            "cpus": (os.cpu_count() or 0) > 0,
            "time": time.strftime("%Y", time.localtime()).isdigit(),
            "tmp": tmp_ok,
        }

    assert run(env, everyday) == {
        "idna": "xn--bcher-kva.example",
        "dns": "127.0.0.1",
        "addrconfig": True,
        "ca": True,
        "cpus": True,
        "time": True,
        "tmp": True,
    }


def test_loopback_tcp_connect_works(env: Env) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def connect() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass

        assert run(env, lambda: outcome(connect)) == "ok"


def _servers() -> dict[str, str]:
    def bind(family: int, kind: int, address: object) -> None:
        with socket.socket(family, kind) as s:
            s.bind(address)

    def listen() -> None:
        with socket.socket() as s:
            s.listen(1)  # binds an ephemeral port by itself

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", ("127.0.0.1", 9))

    return {
        "tcp": outcome(lambda: bind(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0))),
        "udp": outcome(lambda: bind(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0))),
        "unix": outcome(lambda: bind(socket.AF_UNIX, socket.SOCK_STREAM,
                                     os.path.join(os.getcwd(), "s.sock"))),
        "listen": outcome(listen),
        "sendto": outcome(send),
    }


def test_bind_and_listen_are_refused_by_default(env: Env) -> None:
    """A function is a request handler, not a server (docs/sandbox.md#the-layers)."""
    assert run(env, _servers) == {"tcp": "EPERM", "udp": "EPERM", "unix": "EPERM",
                                  "listen": "EPERM", "sendto": "ok"}


def test_tcp_bind_setting_lets_a_worker_bind(env: Env) -> None:
    assert run(env, _servers, tcp_bind=True) == {"tcp": "ok", "udp": "ok", "unix": "ok",
                                                 "listen": "ok", "sendto": "ok"}


def test_system_v_ipc_and_posix_message_queues_are_refused(env: Env) -> None:
    """Every one of them, called raw with zero arguments: without the filter the kernel
    would say EINVAL, EFAULT or ENOENT, so EPERM can only be seccomp's."""
    import pyseccomp

    numbers = {name: pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
               for name in seccomp_module.IPC_DENIED}
    numbers = {name: number for name, number in numbers.items() if number >= 0}
    assert "shmget" in numbers and "mq_open" in numbers

    def attempts() -> dict[str, str]:
        def call(number: int) -> None:
            zero = ctypes.c_long(0)
            if libc.syscall(ctypes.c_long(number), zero, zero, zero, zero, zero) < 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))

        return {name: outcome(lambda n=number: call(n)) for name, number in numbers.items()}

    assert run(env, attempts) == dict.fromkeys(numbers, "EPERM")


def test_posix_shared_memory_is_refused(env: Env) -> None:
    """shm_open is a file in /dev/shm, which Landlock keeps read-only."""
    import _posixshmem

    name = f"/fnd-test-{os.getpid()}"
    try:
        attempt = lambda: _posixshmem.shm_open(name, os.O_CREAT | os.O_RDWR, 0o600)  # noqa: E731
        assert run(env, lambda: outcome(attempt)) == "EACCES"
        assert not os.path.exists("/dev/shm" + name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink("/dev/shm" + name)


def test_no_network_refuses_inet_sockets(env: Env) -> None:
    def attempts() -> list[str]:
        return [
            outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
            outcome(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM)),
            outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
        ]

    report, result = run_sandboxed(env, attempts, network=False)
    assert report["network"].startswith("blocked")
    assert result == ["EPERM", "EPERM", "EPERM"]


# --- failing closed ------------------------------------------------------------------------


def test_strict_mode_fails_closed_when_the_cgroup_cannot_be_joined(env: Env) -> None:
    report, _ = run_sandboxed(env, lambda: None, cgroup_dirs=["/nonexistent/slot-{slot}"])
    assert report["error"].startswith("cgroup: ")


def test_permissive_mode_reports_the_missing_layer(env: Env) -> None:
    report, result = run_sandboxed(
        env,
        lambda: outcome(partial(read, os.path.join(env.project, ".env"))),
        mode="permissive",
        cgroup_dirs=["/nonexistent/slot-{slot}"],
    )
    assert report["cgroup"].startswith("off: ")
    assert missing_layers(report) == ["cgroup"]
    assert result == "EACCES"  # everything else still applies


def test_strict_mode_without_any_cgroup_fails_closed_as_root(env: Env) -> None:
    report, _ = run_sandboxed(env, lambda: None, cgroup_dirs=[])
    assert report["error"].startswith("cgroup: ")


def test_worker_dies_with_its_zygote(env: Env) -> None:
    """PDEATHSIG: when the process that forked the worker dies, the worker is SIGKILLed."""
    r, w = os.pipe()
    zygote = os.fork()
    if zygote == 0:  # pragma: no cover - plays the zygote
        try:
            # The zygote dies only once the worker is sandboxed (PDEATHSIG set): the worker
            # says so on this pipe, or closes it by exiting.
            sandboxed_r, sandboxed_w = os.pipe()
            worker = os.fork()
            if worker == 0:
                os.setsid()
                try:
                    sandbox.apply(env.settings, SLOT, (w, sandboxed_w), env.prepared)
                except BaseException as exc:  # noqa: BLE001 - reported to the test
                    os.write(w, repr(exc).encode() + b"\n")
                    raise
                os.write(w, b"%d\n" % os.getpid())
                os.write(sandboxed_w, b"x")
                time.sleep(60)
            else:
                os.close(sandboxed_w)
                select.select([sandboxed_r], [], [], DEADLINE)
        finally:
            os._exit(0)
    os.close(w)
    try:
        line = _read_line(r, DEADLINE)
    finally:
        os.close(r)
    assert line.isdigit(), line
    worker = int(line)
    reap(zygote, DEADLINE)
    status = reap(worker, DEADLINE)  # orphaned to us: this test process is a child subreaper
    _kill_leftovers(env)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
