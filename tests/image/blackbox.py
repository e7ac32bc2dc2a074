"""Black-box checks of fnd's container image, run by `scripts/image test` (not by pytest).

Starts the image the way an operator with least privileges would: capabilities SETUID SETGID
KILL CHOWN DAC_OVERRIDE FOWNER only, no_new_privs (Kubernetes' allowPrivilegeEscalation:
false), a read-only root filesystem, the engine's default seccomp profile, no --init (fnd is
PID 1), the test project bound read-only at /srv/project, and a writable cgroup v1 subtree
bound from the host. Then talks to it over HTTP and through `fnd status` only. Standard
library only: it runs with the host's python3, outside any venv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).parent / "fixtures" / "project"
CAPABILITIES = ("SETUID", "SETGID", "KILL", "CHOWN", "DAC_OVERRIDE", "FOWNER")
V1_CONTROLLERS = ("memory", "pids", "freezer", "cpuacct")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class CheckFailed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


def until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll an observable (logs, status, HTTP) until it holds, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise CheckFailed(f"not reached in {timeout:.0f} s: {what}")
        time.sleep(0.2)


class Container:
    def __init__(self, engine: str, image: str, name: str) -> None:
        self.engine = engine
        self.image = image
        self.name = name
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def run(self, *args: str, check_rc: bool = True, timeout: float = 120) -> str:
        done = subprocess.run([self.engine, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check_rc and done.returncode != 0:
            raise CheckFailed(f"{self.engine} {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def start(self, project: Path, cgroup_args: list[str],
              capabilities: tuple[str, ...] = CAPABILITIES) -> None:
        caps = [f"--cap-add={cap}" for cap in capabilities]
        # --read-only: as deploy/kubernetes' readOnlyRootFilesystem (/tmp and /run: tmpfs).
        self.run("run", "-d", "--name", self.name, "--cap-drop=all", *caps, "--read-only",
                 "--security-opt=no-new-privileges", "-p", f"127.0.0.1:{self.port}:3000",
                 "-v", f"{project}:/srv/project:ro", *cgroup_args,
                 *(["--health-interval=disable"] if self.engine == "podman" else []),
                 self.image)

    def logs(self) -> list[dict[str, Any]]:
        done = subprocess.run([self.engine, "logs", self.name], capture_output=True,
                              text=True, timeout=30, check=False)
        lines = []
        for text in (done.stdout + done.stderr).splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                line = {"text": text}
            lines.append(line if isinstance(line, dict) else {"text": text})
        return lines

    def event(self, name: str, **fields: Any) -> dict[str, Any] | None:
        for line in self.logs():
            if line.get("event") == name and all(line.get(k) == v for k, v in fields.items()):
                return line
        return None

    def state(self) -> str:
        return self.run("inspect", "--format", "{{.State.Status}}", self.name).strip()

    def status(self) -> dict[str, Any]:
        """`fnd status --json` inside the container (exit code 0 healthy, 3 degraded)."""
        done = subprocess.run([self.engine, "exec", self.name, "fnd", "status", "--json"],
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode not in (0, 3):
            raise CheckFailed(f"fnd status exited {done.returncode}: {done.stderr.strip()}")
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    def remove(self) -> None:
        quick = ["-t", "0"] if self.engine == "podman" else []  # docker rm has no -t
        subprocess.run([self.engine, "rm", "-f", *quick, self.name], capture_output=True,
                       timeout=60, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str, timeout: float = 30) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


@contextmanager
def project_copy() -> Iterator[Path]:
    """The fixture project, world-readable (workers run as other uids and read it)."""
    top = Path(tempfile.mkdtemp(prefix="fnd-image-"))
    target = top / "project"
    shutil.copytree(PROJECT, target)
    for path in [top, *top.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    try:
        yield target
    finally:
        shutil.rmtree(top, ignore_errors=True)


@contextmanager
def cgroup_subtree(name: str) -> Iterator[list[str]]:
    """A host cgroup v1 subtree per controller, bound writable; the container is put in it."""
    mounted = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
               if " - cgroup " in line}
    missing = [c for c in V1_CONTROLLERS[:2] if str(CGROUP_ROOT / c) not in mounted]
    if missing:
        raise CheckFailed(f"this test binds cgroup v1 hierarchies; {missing} not mounted here "
                          "(on a cgroup v2 host see docs/scaling.md)")
    args = [f"--cgroup-parent=/{name}"]
    for controller in V1_CONTROLLERS:
        if str(CGROUP_ROOT / controller) not in mounted:
            continue
        directory = CGROUP_ROOT / controller / name
        directory.mkdir(exist_ok=True)
        args += ["-v", f"{directory}:{CGROUP_ROOT / controller}:rw"]
    try:
        yield args
    finally:
        # The engine makes the parent in every hierarchy (cpu, devices, ...), with conmon in it.
        for directory in CGROUP_ROOT.glob(f"*/{name}"):
            _remove_cgroup(directory)


def _remove_cgroup(directory: Path) -> None:
    deadline = time.monotonic() + 5
    for sub, _dirs, _files in sorted(os.walk(directory), key=lambda w: -len(w[0])):
        while True:
            try:
                os.rmdir(sub)
                break
            except OSError as exc:
                if time.monotonic() > deadline:  # conmon may outlive `rm -f` for a moment
                    print(f"image test: cannot remove cgroup {sub}: {exc}", file=sys.stderr)
                    break
                time.sleep(0.1)


def refuses_without_cap_kill(box: Container, project: Path, cgroup_args: list[str]) -> str:
    box.start(project, cgroup_args, tuple(c for c in CAPABILITIES if c != "KILL"))
    code = box.run("wait", box.name, timeout=120).strip()
    refused = box.event("cannot start")
    check(code != "0" and refused is not None
          and "missing capability CAP_KILL" in str(refused.get("reason")),
          f"without CAP_KILL: exit {code}, {refused}")
    return "without CAP_KILL, strict fnd refuses to start and names it"


def checks(box: Container) -> list[str]:
    passed = []

    def ok(what: str) -> None:
        passed.append(what)
        print(f"  ok  {what}", flush=True)

    def gone_or_started() -> bool:
        if box.state() not in ("running", "created"):
            raise CheckFailed("the container exited:\n" + "\n".join(
                str(line.get("reason") or line.get("text") or line) for line in box.logs()[-20:]))
        return bool(box.event("ready") or box.event("cannot start"))
    until(gone_or_started, "fnd ready", timeout=120)
    refused = box.event("cannot start")
    check(refused is None, f"fnd did not start: {refused and refused.get('reason')}")
    self_check = box.event("sandbox self-check")
    check(bool(self_check and self_check.get("passed") and self_check.get("sandbox") == "strict"),
          f"strict sandbox self-check passed: {self_check}")
    check(box.event("sandbox degraded") is None, "no layer of the sandbox is off")
    ok("fnd up as PID 1, strict sandbox with every layer, no --init, least privileges")

    health = subprocess.run([box.engine, "healthcheck", "run", box.name], capture_output=True,
                            text=True, timeout=60, check=False) if box.engine == "podman" else \
        subprocess.run([box.engine, "exec", box.name, "fnd", "status"], capture_output=True,
                       text=True, timeout=60, check=False)
    check(health.returncode == 0, f"health check (fnd status) exit 0: {health.stdout}"
          f"{health.stderr}")
    status = box.status()
    check(status["sandbox"] == "strict", f"status says strict: {status['sandbox']}")
    ok("health check (fnd status) healthy")

    code, headers, body = get(box.url + "/twiml")
    check(code == 200 and headers.get("Content-Type", "").startswith("text/xml")
          and "<Message>hello from the container</Message>" in body, f"TwiML: {code} {body}")
    ok("TwiML answer")

    code, headers, body = get(box.url + "/json?name=ci")
    answer = json.loads(body) if code == 200 else {}
    check(headers.get("Content-Type", "").startswith("application/json")
          and answer.get("greeting") == "hello from the container"
          and answer.get("name") == "ci", f"JSON: {code} {body}")
    check(answer["uid"] != 0, f"the function runs as a slot uid, not root: {answer}")
    ok(f"JSON answer (function ran as uid {answer['uid']})")

    code, headers, body = get(box.url + "/spin")
    check(code == 504 and "timed out" in body, f"504 at the time limit: {code} {body}")
    invocation = headers.get("X-Fnd-Invocation-Id")
    line: dict[str, Any] = {}

    def logged() -> bool:
        line.update(box.event("invocation", invocation_id=invocation) or {})
        return bool(line)
    until(logged, "the timed-out invocation's log line")

    def replaced() -> bool:
        now = box.status()
        pids = [w["pid"] for w in now["per_worker"]]
        return (line["worker_pid"] not in pids and now["workers"].get("busy", 0) == 0
                and now["restarts"].get("timeout", 0) == 1)
    until(replaced, "the timed-out worker killed and replaced, none left busy")
    check(get(box.url + "/json")[0] == 200, "answers after the timeout")
    ok("504 at the time limit, worker killed and replaced")

    code, _headers, body = get(box.url + "/memory_bomb")
    check(code == 502 and "memory limit" in body, f"502 for a memory bomb: {code} {body}")
    until(lambda: box.status()["restarts"].get("oom", 0) >= 1, "the OOM kill counted")
    check(get(box.url + "/json")[0] == 200, "answers after the OOM kill")
    ok("502 for a memory bomb (the slot's cgroup limit), then answers again")

    results: list[tuple[int, dict[str, str], str]] = []
    slow = threading.Thread(target=lambda: results.append(get(box.url + "/sleep?s=3")))
    slow.start()
    until(lambda: box.status()["workers"].get("busy", 0) >= 1, "the slow call in flight")
    stop = subprocess.run([box.engine, "stop", "-t", "60", box.name], capture_output=True,
                          text=True, timeout=90, check=False)
    slow.join(30)
    check(stop.returncode == 0, f"stop: {stop.stderr}")
    check(bool(results) and results[0][0] == 200 and results[0][2] == "slept",
          f"the call in flight finished during the drain: {results}")
    exit_code = box.run("inspect", "--format", "{{.State.ExitCode}}", box.name).strip()
    check(exit_code == "0", f"exit code 0 after SIGTERM, got {exit_code}")
    stopped = box.event("stopped")
    check(bool(stopped) and stopped is not None and stopped.get("exit_code") == 0,
          f"logged stopped: {stopped}")
    ok("SIGTERM drains the call in flight, exit 0")
    return passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="podman")
    parser.add_argument("--image", default="localhost/fnd:latest")
    args = parser.parse_args()
    name = f"fnd-image-test-{os.getpid()}"
    box = Container(args.engine, args.image, name)
    started = time.monotonic()
    print(f"image test: {args.image} with {args.engine}, container {box.name}", flush=True)
    try:
        with project_copy() as project, cgroup_subtree(box.name) as cgroup_args:
            try:
                box.start(project, cgroup_args)
                passed = checks(box)
                box.remove()
                box = Container(args.engine, args.image, name + "-nokill")
                passed.append(refuses_without_cap_kill(box, project, cgroup_args))
                print(f"  ok  {passed[-1]}", flush=True)
            except (CheckFailed, subprocess.TimeoutExpired) as exc:
                print(f"image test FAILED: {exc}", file=sys.stderr)
                for line in box.logs()[-30:]:
                    print("  | " + json.dumps(line), file=sys.stderr)
                return 1
            finally:
                box.remove()
    except CheckFailed as exc:
        print(f"image test FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"image test: all {len(passed)} checks ok in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
