"""deploy/kubernetes/ as shipped, with `podman kube play` standing in for a node: run by
`scripts/image kube-test` (not by pytest), after `scripts/image project` has baked
tests/image/fixtures/kube into localhost/fnd-project:latest.

The Deployment file is played unchanged. What podman 4.3 does differently from a kubelet is
worked around here, never in the manifests (docs/scaling.md, "podman kube play as a node"):
- a Secret volume gets its `data` still base64-encoded, and nothing of `stringData`: a Secret
  is played so that the volume exists, and the test writes the .env into it, as a kubelet would;
- every containerPort is published on the host at its own number, so of the two replicas only
  fnd-pod-0 is started (the other one's ports would clash); the test talks to the pod from
  inside its network namespace (127.0.0.1 there), as a kubelet's probes and a Service do,
  which also keeps the connection when podman takes the pod's network down;
- `podman kube down` kills the containers without a grace period: the test first stops the pod
  as a kubelet deletes one (SIGTERM, then terminationGracePeriodSeconds), then runs kube down;
- no probes and no preStop are run (podman's health checks need systemd): the test polls
  /readyz itself.

Checks marked [uid accounting] need the strict sandbox without a writable cgroup (#23): until
then the pod crash-loops and the test fails at its first check. Standard library only: it runs
with the host's python3, outside any venv.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = ROOT / "deploy" / "kubernetes" / "deployment.yaml"
POD = "fnd-pod-0"  # podman names a Deployment's pods <name>-pod-<i>
EXTRA_POD = "fnd-pod-1"
CONTAINER = f"{POD}-fnd"
HTTP, ADMIN = 3000, 9464  # the Deployment's containerPorts, published by podman as they are
SECRET_ENV = "FROM_SECRET=yes\nAUTH_TOKEN=kube-test\n"
READY_WITHIN = 60.0


class CheckFailed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


def until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> float:
    """Poll an observable until it holds; the seconds it took, or fail after `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise CheckFailed(f"not reached in {timeout:.0f} s: {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def podman(*args: str, timeout: float = 120, check_rc: bool = True) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check_rc and done.returncode != 0:
        raise CheckFailed(f"podman {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


class PodNetwork:
    """Threads that live in the pod's network namespace: 127.0.0.1 there is the pod's."""

    _CLONE_NEWNET = 0x40000000
    executor: ThreadPoolExecutor | None = None

    @classmethod
    def enter(cls, pid: int) -> None:
        # The namespace is held open by this descriptor, even after the pod's processes exit.
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        cls.executor = ThreadPoolExecutor(max_workers=4, initializer=cls._setns, initargs=(fd,))

    @classmethod
    def _setns(cls, fd: int) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, cls._CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the pod's network namespace")


def get(port: int, path: str, timeout: float = 30) -> tuple[int, dict[str, str], str]:
    assert PodNetwork.executor is not None, "the pod is not started"
    return PodNetwork.executor.submit(_get, port, path, timeout).result(timeout + 30)


def _get(port: int, path: str, timeout: float) -> tuple[int, dict[str, str], str]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def readyz() -> tuple[int, str]:
    try:
        code, _headers, body = get(ADMIN, "/readyz", timeout=5)
    except OSError as exc:
        return 0, str(exc)
    return code, body


def logs() -> str:
    done = subprocess.run(["podman", "logs", CONTAINER], capture_output=True, text=True,
                          timeout=30, check=False)
    return done.stdout + done.stderr


def log_lines() -> list[dict[str, Any]]:
    found = []
    for text in logs().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict):
            found.append(line)
    return found


def restarts() -> int:
    return int(podman("inspect", "--format", "{{.RestartCount}}", CONTAINER).strip() or 0)


def status() -> tuple[int, dict[str, Any]]:
    """`fnd status --json` in the container: its exit code and answer."""
    done = subprocess.run(["podman", "exec", CONTAINER, "fnd", "status", "--json"],
                          capture_output=True, text=True, timeout=30, check=False)
    try:
        answer: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise CheckFailed(f"fnd status exited {done.returncode}: {done.stderr.strip()}") from None
    return done.returncode, answer


_PS = ("import os\n"
       "for p in os.listdir('/proc'):\n"
       "    if p.isdigit():\n"
       "        try: print(p, os.stat('/proc/' + p).st_uid)\n"
       "        except OSError: pass\n")


def sandboxed_pids() -> set[int]:
    """Every process in the container that is not root's: workers and what they left."""
    out = podman("exec", CONTAINER, "python3", "-c", _PS, timeout=30)
    return {int(pid) for pid, uid in (line.split() for line in out.splitlines()) if uid != "0"}


def worker_pids() -> set[int]:
    return {w["pid"] for w in status()[1].get("per_worker", []) if w.get("pid")}


def only_workers_left() -> bool:
    return sandboxed_pids() <= worker_pids()


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


# -- the pod's life --------------------------------------------------------------------

def play(folder: Path) -> None:
    for port in (HTTP, ADMIN):
        check(port_free(port), f"host port {port} is in use: podman publishes the pod's "
              "containerPorts on the host as they are")
    secret = folder / "secret.yaml"
    encoded = base64.b64encode(SECRET_ENV.encode()).decode()
    secret.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: fnd-env}\n"
                      f"type: Opaque\ndata:\n  .env: {encoded}\n")
    podman("kube", "play", str(secret))
    podman("kube", "play", "--start=false", str(DEPLOYMENT))
    volume = Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", "fnd-env").strip())
    env = volume / ".env"
    env.unlink(missing_ok=True)
    env.write_text(SECRET_ENV)
    env.chmod(0o400)  # the Secret volume's defaultMode
    podman("pod", "start", POD)  # fnd-pod-1 stays created, not started
    PodNetwork.enter(int(podman("inspect", "--format", "{{.State.Pid}}", CONTAINER).strip()))


def wait_ready() -> float:
    started = time.monotonic()

    def ready() -> bool:
        if restarts() > 0:
            reasons = [line.get("reason") for line in log_lines()
                       if line.get("event") == "cannot start"]
            raise CheckFailed(f"the pod crash-loops: {reasons[-1] if reasons else logs()[-800:]}")
        return readyz()[0] == 200
    until(ready, "/readyz 200", timeout=READY_WITHIN)
    return time.monotonic() - started


def clean_up() -> None:
    for args in (["kube", "down", str(DEPLOYMENT)], ["pod", "rm", "-f", "-t", "0", POD],
                 ["pod", "rm", "-f", "-t", "0", EXTRA_POD], ["secret", "rm", "fnd-env"],
                 ["volume", "rm", "-f", "fnd-env"], ["volume", "rm", "-f", "run"],
                 ["volume", "rm", "-f", "tmp"]):
        subprocess.run(["podman", *args], capture_output=True, timeout=120, check=False)


# -- the checks, in order ----------------------------------------------------------------

def status_names_uid_accounting() -> str:
    """[uid accounting] fnd status in the container: healthy, with the uid accounting."""
    code, answer = status()
    check(code == 0, f"fnd status exit 0, got {code}: sandbox {answer.get('sandbox')}, "
          f"warnings {answer.get('sandbox_warnings')}")
    check(answer.get("sandbox") == "strict" and answer.get("accounting") == "uid",
          f"strict sandbox with accounting=uid: {answer.get('sandbox')}, "
          f"{answer.get('accounting')}")
    return "[uid accounting] fnd status exit 0: strict sandbox, accounting=uid"


def answers_twiml_and_json() -> str:
    code, headers, body = get(HTTP, "/twiml")
    check(code == 200 and headers.get("Content-Type", "").startswith("text/xml")
          and "<Message>hello from the pod</Message>" in body, f"TwiML: {code} {body}")
    code, headers, body = get(HTTP, "/json?name=kube")
    answer = json.loads(body) if code == 200 else {}
    check(answer.get("greeting") == "hello from the pod" and answer.get("name") == "kube",
          f"JSON: {code} {body}")
    check(answer.get("from_secret") == "yes", f"the Secret's .env read through env_file: {answer}")
    left_out = subprocess.run(["podman", "exec", CONTAINER, "ls", "-A", "/srv/project"],
                              capture_output=True, text=True, timeout=30, check=False).stdout
    check(".env" not in left_out.split(), f"the project's .env not in the image: {left_out}")
    check(answer.get("uid", 0) != 0, f"the function ran as a slot uid: {answer}")
    return f"TwiML and JSON answers (function as uid {answer['uid']}, .env from the Secret)"


def timeout_is_504() -> str:
    code, _headers, body = get(HTTP, "/spin")
    check(code == 504 and "timed out" in body, f"504 at the time limit: {code} {body}")
    until(lambda: status()[1].get("restarts", {}).get("timeout", 0) >= 1
          and status()[1]["workers"].get("busy", 0) == 0, "the timed-out worker replaced")
    check(get(HTTP, "/json")[0] == 200, "answers after the timeout")
    return "504 at the time limit, the worker killed and replaced"


def setsid_child_is_gone() -> str:
    """[uid accounting] A grandchild in a session of its own, left by a timed-out call."""
    code, _headers, _body = get(HTTP, "/setsid_child")
    check(code == 504, f"504 for the call that left a setsid child: {code}")
    answered = time.monotonic()
    until(lambda: _grandchild() is not None, "the grandchild's pid in the function output")
    grandchild = _grandchild()
    until(lambda: grandchild not in sandboxed_pids(), f"setsid grandchild {grandchild} gone")
    took = time.monotonic() - answered
    until(only_workers_left, "no sandboxed process but the workers")
    return f"[uid accounting] setsid child of a timed-out call gone {took:.1f} s after the 504"


def _grandchild() -> int | None:
    found = re.findall(r"setsid grandchild (\d+)", logs())
    return int(found[-1]) if found else None


def fork_bomb_is_contained() -> str:
    """[uid accounting] RLIMIT_NPROC per slot uid stops it; everything it forked is killed."""
    left_before = sandboxed_pids() - worker_pids()  # another check's failure, not this one's
    code, _headers, body = get(HTTP, "/fork_bomb")
    check(code == 200, f"fork bomb answered: {code} {body[:300]}")
    result = json.loads(body)
    check(result.get("errno") == "EAGAIN" and len(result["children"]) < 1000,
          f"fork refused (EAGAIN) early: {result.get('errno')}, {len(result['children'])}")
    children = set(result["children"])
    until(lambda: not children & sandboxed_pids(), "the fork bomb's processes gone")
    until(lambda: sandboxed_pids() - worker_pids() <= left_before,
          "no sandboxed process but the workers")
    check(get(HTTP, "/json")[0] == 200, "answers after the fork bomb")
    return (f"fork bomb stopped at {len(children)} processes (EAGAIN), all of them killed, "
            "nothing left but the workers")


def stop_answers_the_call_in_flight() -> str:
    results: list[tuple[int, dict[str, str], str]] = []
    call = threading.Thread(target=lambda: results.append(get(HTTP, "/sleep?s=6", timeout=60)))
    call.start()
    until(lambda: status()[1]["workers"].get("busy", 0) >= 1, "the slow call in flight")
    # The pod deleted, as a kubelet does it: SIGTERM, SIGKILL after the grace period.
    stop = threading.Thread(target=lambda: podman("pod", "stop", "-t", "45", POD, timeout=90,
                                                  check_rc=False))
    stop.start()
    try:
        until(lambda: readyz() == (503, "not ready: draining\n"), "/readyz 503 while draining",
              timeout=10)
        check(not results, "the call was still in flight when /readyz said draining")
    finally:
        call.join(60)
        stop.join(90)
    check(bool(results) and results[0][0] == 200 and results[0][2] == "slept",
          f"the call in flight answered during the stop: {results}")
    code = podman("inspect", "--format", "{{.State.ExitCode}}", CONTAINER).strip()
    stopped = any(line.get("event") == "stopped" for line in log_lines())
    check(code == "0" and stopped, f"fnd drained and exited 0: {code}")
    podman("kube", "down", str(DEPLOYMENT))
    return "pod stopped: /readyz 503 at once, the call in flight answered 200, exit 0, kube down"


CHECKS = [status_names_uid_accounting, answers_twiml_and_json, timeout_is_504,
          setsid_child_is_gone, fork_bomb_is_contained, stop_answers_the_call_in_flight]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    started = time.monotonic()
    passed: list[str] = []
    failed: list[str] = []
    print(f"kube test: {DEPLOYMENT.relative_to(ROOT)} with podman kube play", flush=True)
    clean_up()  # what an interrupted run left
    try:
        with tempfile.TemporaryDirectory(prefix="fnd-kube-") as folder:
            play(Path(folder))
            took = wait_ready()
            passed.append(f"/readyz 200 {took:.1f} s after the pod started")
            print(f"  ok  {passed[-1]}", flush=True)
            for step in CHECKS:
                try:
                    passed.append(step())
                    print(f"  ok  {passed[-1]}", flush=True)
                except (CheckFailed, subprocess.TimeoutExpired, OSError, ValueError) as exc:
                    failed.append(f"{step.__name__}: {exc}")
                    print(f"  FAILED  {failed[-1]}", file=sys.stderr, flush=True)
    except (CheckFailed, subprocess.TimeoutExpired) as exc:
        failed.append(str(exc))
        print(f"kube test FAILED: {exc}", file=sys.stderr)
        for line in logs().splitlines()[-30:]:
            print("  | " + line, file=sys.stderr)
    finally:
        clean_up()
    print(f"kube test: {time.monotonic() - started:.0f} s")
    print(f"{len(passed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
