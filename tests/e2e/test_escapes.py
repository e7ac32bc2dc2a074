"""docs/sandbox.md#what-a-function-cannot-do through the real daemon: one hostile function
per escape attempt.

Each function in fixtures/hostile tries one thing and returns what happened (an errno name,
"ok" when the attempt worked); each test asserts the exact outcome. Unlike
tests/worker/test_sandbox.py (the sandbox on its own), these run the whole path: `fnd serve`
as root, the zygote, per-slot uids, cgroups, and the HTTP answer. One daemon serves the
module: the attempts that kill a worker (bombs) leave the daemon itself untouched, and the
tests say so by asserting the next request works.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from fnd.daemon.sandbox.scratch_root import roots_of
from fnd.protocol.sandbox_config import LAYERS, MiB, missing_layers
from tests.fndserver import FndServer, running, until
from tests.hits import HitRecorder, hit_server
from tests.twilio_fake import TwilioFake, twilio_fake

pytestmark = pytest.mark.root_only  # worker uids, cgroups, mounts

OPERATOR_SECRET = "operator-secret-5b1d"
ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
UID_BASE = 61000
MEMORY_MIB = 256  # the default memory_mb
FSIZE = 64 * MiB  # the default RLIMIT_FSIZE
NOFILE = 256  # the default RLIMIT_NOFILE
PIDS_MAX = 64  # the default pids.max / RLIMIT_NPROC


def _as_root() -> None:
    assert os.geteuid() == 0, "the escape suite runs as root (CI does): uids and cgroups"


# --- the daemon under attack -----------------------------------------------------------------


@pytest.fixture(scope="module")
def twilio() -> Iterator[TwilioFake]:
    with twilio_fake() as fake:
        yield fake


@pytest.fixture(scope="module")
def fnd(twilio: TwilioFake) -> Iterator[FndServer]:
    _as_root()
    env = {
        # The operator's environment: nothing of it may reach a function.
        "FND_TEST_SECRET": OPERATOR_SECRET,
        "NOTIFY_SOCKET": "/run/fnd-test-no-such-notify.sock",
        "FND_TWILIO_API_BASE_URL": twilio.url,
    }
    with running("hostile", "--workers-min", "3", "--workers-max", "4", "--timeout", "20",
                 env=env) as server:
        yield server


@pytest.fixture(scope="module")
def hits() -> Iterator[HitRecorder]:
    with hit_server() as recorder:
        yield recorder



def attempt(fnd: FndServer, function: str, /, **params: object) -> Any:
    """Run one hostile function; it must answer 200 with what it observed."""
    response = fnd.get(function, params=params)
    assert response.status_code == 200, f"{function}: {response.status_code} {response.text}"
    return response.json()



def daemon_is_fine(fnd: FndServer) -> None:
    """The daemon is alive, answers its control socket and serves the next request."""
    assert fnd.process.poll() is None
    assert fnd.status()["ok"] is True
    assert attempt(fnd, "/threads")["results"][1] == 499500


# --- every worker is fully sandboxed -----------------------------------------------------------


def test_every_worker_reports_every_layer(fnd: FndServer) -> None:
    status = fnd.status()
    workers = [w for w in status["per_worker"] if w["state"] in ("idle", "busy")]
    assert len(workers) >= 3
    first = status["uids"]["first"]  # the range this daemon holds: 61000 unless taken
    assert first >= UID_BASE
    for worker in workers:
        layers = worker["layers"]
        assert sorted(layers) == sorted(LAYERS)
        assert missing_layers(layers) == []
        assert not [name for name, value in layers.items() if value.startswith("n/a")]
        assert layers["uid"] == str(first + worker["slot"])
        assert layers["cgroup"].startswith(("v1 memory+pids", "v2"))
        assert layers["landlock"].startswith("abi ")
        assert layers["network"] == "allowed"
        assert re.search(r"\bcore=0\b", layers["rlimits"])
        assert re.search(rf"\bfsize={FSIZE}\b", layers["rlimits"])


def test_startup_self_check_ran_and_passed(fnd: FndServer) -> None:
    """fnd serve's canary (daemon/canary.py) ran in a real worker before "ready"."""
    line = fnd.wait_for(lambda entry: entry.get("event") == "sandbox self-check")
    assert (line["level"], line["passed"], line["escapes"], line["error"]) == (
        "info", True, [], None)
    assert line["checks"] == {
        "list project root": "EACCES",
        "read .env": "EACCES",
        "read fnd.toml": "EACCES",
        "read daemon environ": "EACCES",
        "write outside scratch": "EACCES",
        "setuid root": "EPERM",
        "ptrace zygote": "EPERM",
        "signal daemon": "EPERM",
        "netlink socket": "EPERM",
        "vsock socket": "EPERM",
        "see daemon environment": "hidden",
    }
    events = [entry.get("event") for entry in fnd.lines]
    assert events.index("sandbox self-check") < events.index("ready")


# --- files ---------------------------------------------------------------------------------


def test_read_etc_shadow_is_refused(fnd: FndServer) -> None:
    assert attempt(fnd, "/read_shadow") == {"outcome": "EACCES"}


@pytest.mark.parametrize("name", [".env", "fnd.toml"])
def test_project_config_and_secrets_are_unreadable(fnd: FndServer, name: str) -> None:
    assert (fnd.project / name).exists()  # the fixture really has it
    result = attempt(fnd, "/read_project_file", project=str(fnd.project), name=name)
    assert result == {"read": "EACCES", "list": "EACCES"}


def test_write_outside_scratch_is_refused(fnd: FndServer) -> None:
    targets = [
        f"/tmp/fnd-escape-{os.getpid()}",
        str(fnd.project / "escape.txt"),
        str(fnd.project / "functions" / "evil.py"),
        "/etc/fnd-escape",
        "/dev/shm/fnd-escape",
    ]
    for target in targets:
        assert attempt(fnd, "/write_file", path=target) == {"outcome": "EACCES"}, target
        assert not os.path.exists(target)


def test_write_inside_scratch_works(fnd: FndServer) -> None:
    result = attempt(fnd, "/write_scratch")
    assert result["text"] == "scratch works"
    [scratch_root] = roots_of(fnd.process.pid)
    assert re.fullmatch(re.escape(scratch_root) + r"/slot-\d+", result["cwd"])
    assert result["tmpdir"] == result["cwd"]


def test_control_socket_is_unreachable(fnd: FndServer) -> None:
    assert attempt(fnd, "/connect_unix", path=fnd.control) == {"outcome": "EACCES"}


# --- privileges and other processes ----------------------------------------------------------


def test_setuid_root_is_refused(fnd: FndServer) -> None:
    result = attempt(fnd, "/setuid_root")
    assert result["setuid"] == "EPERM" and result["setgid"] == "EPERM"
    assert result["groups"] == []
    assert str(result["uid"]) in {w["layers"].get("uid") for w in fnd.status()["per_worker"]}
    assert result["uid"] >= UID_BASE


def _targets(fnd: FndServer) -> list[int]:
    """The daemon, the zygote and every live worker; one of the workers runs the attempt."""
    workers = [w["pid"] for w in fnd.status()["per_worker"] if w["pid"] and w["state"] != "dead"]
    zygote = psutil.Process(workers[0]).ppid()
    return [fnd.process.pid, zygote, *workers]


def _refused_for_all_others(result: dict[str, Any], targets: list[int]) -> None:
    others = [pid for pid in targets if pid != result["self"]]
    assert len(others) >= 4  # the daemon, the zygote and at least two sibling workers
    assert result["results"] == {str(pid): "EPERM" for pid in others}


def test_ptrace_of_daemon_zygote_and_siblings_is_refused(fnd: FndServer) -> None:
    targets = _targets(fnd)
    result = attempt(fnd, "/ptrace_attach", pids=",".join(map(str, targets)))
    _refused_for_all_others(result, targets)


def test_kill_of_daemon_zygote_and_siblings_is_refused(fnd: FndServer) -> None:
    targets = _targets(fnd)
    result = attempt(fnd, "/kill_process", pids=",".join(map(str, targets)))
    _refused_for_all_others(result, targets)
    assert all(psutil.pid_exists(pid) for pid in targets)
    daemon_is_fine(fnd)


def test_daemon_environ_file_is_unreadable(fnd: FndServer) -> None:
    assert attempt(fnd, "/proc_environ", pid=fnd.process.pid) == {"outcome": "EACCES"}


def test_daemon_environment_is_not_inherited(fnd: FndServer) -> None:
    environ = attempt(fnd, "/environ")
    assert "FND_TEST_SECRET" not in environ and "NOTIFY_SOCKET" not in environ
    assert not [name for name in environ if name.startswith(("FND_", "LISTEN_", "WATCHDOG_"))]
    assert not [name for name, value in environ.items() if OPERATOR_SECRET in value]
    # Nothing of the daemon's own environment: the worker's base and the project's variables.
    assert set(environ) == {"PATH", "HOME", "LANG", "TMPDIR",
                            "ACCOUNT_SID", "AUTH_TOKEN", "DOTENV_SECRET", "TOML_SECRET"}
    assert environ["PATH"] == "/usr/local/bin:/usr/bin:/bin"


@pytest.mark.parametrize("namespace", ["user", "mount", "net"])
def test_unshare_is_refused(fnd: FndServer, namespace: str) -> None:
    assert attempt(fnd, "/unshare", ns=namespace) == {"outcome": "EPERM"}


@pytest.mark.parametrize("path", ["/mount", "/bpf", "/keyctl", "/netlink", "/packet_socket"])
def test_kernel_interfaces_are_refused(fnd: FndServer, path: str) -> None:
    assert attempt(fnd, path) == {"outcome": "EPERM"}


# Every address family but these is refused by seccomp, whatever the host has loaded: on a
# Firecracker/QEMU/Nitro guest AF_VSOCK reaches the hypervisor.
REFUSED_FAMILIES = ("AF_UNSPEC", "AF_KEY", "AF_NETLINK", "AF_PACKET", "AF_RDS", "AF_CAN",
                    "AF_TIPC", "AF_BLUETOOTH", "AF_ALG", "AF_VSOCK", "AF_KCM", "AF_QIPCRTR",
                    "AF_SMC", "AF_XDP", "AF_MCTP", "family 46")


def families_expected(inet: str) -> dict[str, Any]:
    return {
        "socket": {"AF_UNIX": "ok", "AF_INET": inet, "AF_INET6": inet,
                   **dict.fromkeys(REFUSED_FAMILIES, "EPERM")},
        # only AF_UNIX makes pairs; the filter refuses the rest before the kernel says so
        "socketpair": {"AF_UNIX": "ok", "AF_INET": "EPERM", "AF_TIPC": "EPERM",
                       "AF_VSOCK": "EPERM"},
        "vsock listen": "EPERM",
        "AF_VSOCK | 1 << 32": "EPERM",  # the high bits do not hide the family
    }


def test_only_unix_and_inet_sockets_can_be_opened(fnd: FndServer) -> None:
    assert attempt(fnd, "/socket_families") == families_expected(inet="ok")


# --- resources -----------------------------------------------------------------------------


def test_fd_exhaustion_is_emfile(fnd: FndServer) -> None:
    result = attempt(fnd, "/fd_exhaustion")
    assert result["errno"] == "EMFILE"
    assert NOFILE - 16 < result["opened"] < NOFILE
    daemon_is_fine(fnd)


def test_one_gib_write_stops_at_the_file_size_limit(fnd: FndServer) -> None:
    assert attempt(fnd, "/big_write") == {"errno": "EFBIG", "written": FSIZE, "size": FSIZE}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_fork_bomb_is_stopped_and_nothing_else_notices(fnd: FndServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as gate:
        gate.settimeout(30)
        held: list[Any] = []
        holder = threading.Thread(target=lambda: held.append(
            fnd.get("/hold", params={"port": gate.getsockname()[1]})))
        holder.start()
        conn, _ = gate.accept()  # a request is now running in another worker
        with conn:
            bomb = fnd.get("/fork_bomb")
            conn.sendall(b"released")
        holder.join(30)
    assert bomb.status_code == 200
    result = bomb.json()
    assert result["errno"] == "EAGAIN" and 0 < len(result["children"]) < PIDS_MAX
    # The worker that forked is replaced, and every process it left behind is killed.
    bomber = fnd.invocation(bomb.headers["X-Fnd-Invocation-Id"])["worker_pid"]
    until(lambda: not any(_alive(pid) for pid in [bomber, *result["children"]]))
    until(lambda: bomber not in [w["pid"] for w in fnd.status()["per_worker"]])
    assert held[0].status_code == 200 and held[0].json() == {"got": "released"}
    daemon_is_fine(fnd)


def test_memory_bomb_is_a_catchable_memory_error(fnd: FndServer) -> None:
    result = attempt(fnd, "/memory_bomb")
    assert result["outcome"] == "MemoryError"
    assert result["allocated_mib"] < MEMORY_MIB  # RLIMIT_DATA hit before the cgroup limit
    daemon_is_fine(fnd)


def test_uncaught_memory_error_is_a_500_and_the_worker_is_replaced(fnd: FndServer) -> None:
    response = fnd.get("/memory_bomb_uncaught")
    assert response.status_code == 500 and "MemoryError" in response.text
    line = fnd.invocation(response.headers["X-Fnd-Invocation-Id"])
    until(lambda: line["worker_pid"] not in [w["pid"] for w in fnd.status()["per_worker"]])
    daemon_is_fine(fnd)


def test_memory_outside_rlimit_data_is_stopped_by_the_cgroup(fnd: FndServer) -> None:
    response = fnd.get("/memory_bomb_shared")
    assert response.status_code == 502
    assert response.text == "function crashed: worker exceeded its memory limit\n"
    assert fnd.status()["restarts"].get("oom", 0) >= 1
    daemon_is_fine(fnd)


# --- what must keep working ----------------------------------------------------------------


def test_threads_work(fnd: FndServer) -> None:
    assert attempt(fnd, "/threads")["results"][7] == sum(range(7000))


def test_subprocess_works(fnd: FndServer) -> None:
    assert attempt(fnd, "/subprocess_true") == {"true": 0, "echo": "hi\n"}


def test_urllib_to_loopback_works(fnd: FndServer, hits: HitRecorder) -> None:
    assert attempt(fnd, "/urllib_hit", url=hits.url) == {"status": 200}
    assert hits.wait_for("/urllib")


def test_twilio_client_sends_a_request(fnd: FndServer, twilio: TwilioFake) -> None:
    assert attempt(fnd, "/twilio_send") == {"sid": "SM" + "a" * 32, "status": "queued"}
    sent = twilio.requests[-1]
    assert (sent.method, sent.path) == ("POST", f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json")
    assert sent.headers["x-twilio-host"] == "api.twilio.com"
    assert sent.headers["authorization"].startswith("Basic ")
    assert sent.form["Body"] == ["sandboxed"]


# --- network = false ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offline() -> Iterator[FndServer]:
    _as_root()
    with running("hostile", "--workers-min", "1", "--workers-max", "1",
                 files={"fnd.toml": "network = false\n"}) as server:
        yield server


def test_network_false_is_reported(offline: FndServer) -> None:
    layers = offline.status()["per_worker"][0]["layers"]
    assert missing_layers(layers) == []
    assert layers["network"] == "blocked (no inet sockets)"
    assert layers["landlock"].endswith("no tcp")


def test_network_false_refuses_loopback_tcp(offline: FndServer, hits: HitRecorder) -> None:
    port = hits.url.rsplit(":", 1)[1]
    assert attempt(offline, "/tcp_connect", port=port) == {
        "tcp": "EPERM", "tcp6": "EPERM", "udp": "EPERM",
    }
    response = offline.get("/urllib_hit", params={"url": hits.url})
    assert response.status_code == 500
    line = offline.invocation(response.headers["X-Fnd-Invocation-Id"])
    assert "[Errno 1] Operation not permitted" in line["reason"]


def test_network_false_leaves_only_unix_sockets(offline: FndServer) -> None:
    assert attempt(offline, "/socket_families") == families_expected(inet="EPERM")


def test_network_false_refuses_dns(offline: FndServer) -> None:
    # EAI_AGAIN: the resolver could not open its socket. /etc/hosts names still resolve.
    assert attempt(offline, "/dns", name="example.com") == {
        "udp": "EPERM", "gaierror": socket.EAI_AGAIN,
    }
