"""The systems bench/peers.py compares: how each is installed, started on loopback and stopped.

Installs go to a cache folder (default /tmp/fnd-peers-cache, reused between runs) or, with
--fresh, to a temp folder removed at the end. Every server runs in its own session. fnd starts
through its own launcher (fnd/author/launcher.py: SIGTERM, then SIGKILL after 30 s); stopping
a peer sends SIGTERM to its root, waits, then SIGKILLs whatever is left of the process tree it
had (and of its process group), by pid. Also here: the wrk runner with a request timeout and
the peak-PSS sampler over a server's process tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.common import BENCH, ROOT, Load, free_port, readable_copy, wait_port
from fnd.author.launcher import ServeProcess

PEER_PROJECTS = BENCH / "peer_projects"
DEFAULT_CACHE = Path("/tmp/fnd-peers-cache")
SYSTEM_PYTHON = "/usr/bin/python3"


# -- processes --------------------------------------------------------------------------------
def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM (delivered after the block): a second Ctrl-C must not cut a stop
    short and leave a server running."""
    held = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def stop_process(popen: subprocess.Popen[bytes], grace: float, started: float) -> None:
    with signals_held():
        _stop_process(popen, grace, started)


def _stop_process(popen: subprocess.Popen[bytes], grace: float, started: float) -> None:
    """SIGTERM the root, wait `grace` s, then SIGKILL what is left of its tree and of its
    process group (members created after `started`, the root's start time)."""
    members = tree(popen.pid)
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(grace)
    _, alive = psutil.wait_procs(members, timeout=2)
    # Descendants reparented away from the root still carry its process group id.
    for process in psutil.process_iter(["pid", "create_time"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if (os.getpgid(process.pid) == popen.pid
                    and process.info["create_time"] >= started and process not in alive):
                alive.append(process)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()  # psutil checks the pid still names the same process
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(5)


def settle(pid: int, processes: int, timeout: float = 30.0) -> None:
    """Wait until the tree is back to `processes` processes: twilio-run's per-request children
    from a run that ended must not load the next one."""
    deadline = time.monotonic() + timeout
    while len(tree(pid)) > processes and time.monotonic() < deadline:
        time.sleep(0.1)


class PeakPss:
    """Samples the summed PSS of a process tree every `interval` s in a thread; keeps the max."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.peak = 0
        self.processes = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        total = count = 0
        for process in tree(self.pid):
            with contextlib.suppress(psutil.Error):
                total += process.memory_full_info().pss
                count += 1
        if total > self.peak:
            self.peak, self.processes = total, count
        return total

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# -- load ---------------------------------------------------------------------------------
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def wrk(url: str, connections: int, seconds: int, timeout: int = 10) -> Load:
    """One wrk run, one thread (the load generator shares the 2 cores), bounded in time.

    Requests slower than `timeout` count as errors (wrk leaves them out of the latencies)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout}s",
         "--latency", url],
        check=True, capture_output=True, text=True, timeout=seconds + timeout + 60,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    if re.search(r"^\s*0 requests in", out, re.M):
        p50 = p99 = None  # nothing completed: wrk's latency lines are zeros, not figures
    return Load(rps=float(found.group(1)) if found else 0.0,
                p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
                p99_ms=_ms(p99.group(1)) if p99 else float("nan"), errors=errors)


# -- servers ------------------------------------------------------------------------------
@dataclass
class Running:
    """A server under test: where to send requests and the root of its process tree."""

    base: str
    pid: int
    log: Path
    control: str | None = None
    info: dict[str, object] = field(default_factory=dict)


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def serve(command: list[str], port: int, probe: str, log: Path, *, cwd: Path,
          env: dict[str, str] | None = None, grace: float = 30.0,
          control: str | None = None) -> Iterator[Running]:
    """Start `command` in its own session, wait until `probe` answers 200, stop it after."""
    with open(log, "wb") as out:
        popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                 env={**os.environ, **(env or {})}, start_new_session=True)
    started = time.time() - 1.0  # create times are rounded: a margin, never a later start
    try:
        base = f"http://127.0.0.1:{port}"
        wait_answering(base + probe, port, popen, command[0], log)
        yield Running(base, popen.pid, log, control)
    finally:
        stop_process(popen, grace, started)


def wait_answering(url: str, port: int, popen: subprocess.Popen[bytes], name: str,
                   log: Path) -> None:
    """Until `url` answers 200 (a server may listen before its first worker is up)."""
    try:
        wait_port(port, 90)
        deadline = time.monotonic() + 60
        while (status := http_get(url)[0]) != 200:
            if time.monotonic() > deadline or popen.poll() is not None:
                raise RuntimeError(f"{url} answered {status}")
            time.sleep(0.2)
    except Exception as exc:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name} did not start ({exc}); log tail:\n{tail}") from exc


@dataclass
class System:
    """One row group of the table: `start(function, workdir)` yields a Running server."""

    key: str
    label: str
    functions: tuple[str, ...]
    start: Callable[[str, Path], contextlib.AbstractContextManager[Running]]
    version: str = ""


def fnd_args(port: int, workers: int | None, *extra: str) -> list[str]:
    """fnd serve in production config: strict sandbox (the default, as root), JSON logs
    (the launcher's), metrics on their own port. `workers` pins the pool size; None keeps
    the default elastic pool (workers_min 2, workers_max 4)."""
    pool = [] if workers is None else ["--workers-min", str(workers),
                                       "--workers-max", str(workers)]
    return ["--port", str(port), "--metrics-port", str(free_port()), *pool, *extra]


@contextmanager
def fnd(project: Path, workdir: Path, workers: int | None, *extra: str,
        probe: str = "/hello", python: Path | None = None) -> Iterator[Running]:
    """fnd through its own launcher (fnd.author.launcher), logging to a file in `workdir`.
    `python`: the interpreter of another fnd install (a baseline) instead of this one."""
    copy = readable_copy(project)  # sandboxed workers run as other uids

    def other_python(command: list[str]) -> list[str]:
        return [str(python), *command[1:]]

    try:
        port = free_port()
        log = workdir / f"fnd-{workers or 'default'}w-{port}.log"
        with ServeProcess(copy, fnd_args(port, workers, *extra), ready_timeout=90,
                          folder=copy.parent, log_file=log, cwd=ROOT, new_session=True,
                          wrap=None if python is None else other_python) as daemon:
            base = f"http://127.0.0.1:{port}"
            wait_answering(base + probe, port, daemon.process, "fnd", log)
            yield Running(base, daemon.pid, log, daemon.control)
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def fnd_system(workers: int | None, key: str, *extra: str) -> System:
    def start(function: str, workdir: Path) -> contextlib.AbstractContextManager[Running]:
        return fnd(PEER_PROJECTS / "fnd", workdir, workers, *extra, probe="/" + function)

    label = "fnd, default pool (2-4 workers)" if workers is None else f"fnd, {workers} workers"
    if extra:
        label += " " + " ".join(extra)
    return System(key, label, ("hello", "json"), start, _fnd_version())


def baseline_system(installs: Installs, rev: str, key: str, *extra: str) -> System:
    """fnd as it was at git revision `rev` (its own tree and venv, see Installs.baseline),
    started exactly as this checkout's fnd is: the "same run" of a target against an older
    fnd."""
    python, commit = installs.baseline(rev)

    def start(function: str, workdir: Path) -> contextlib.AbstractContextManager[Running]:
        return fnd(PEER_PROJECTS / "fnd", workdir, None, *extra, probe="/" + function,
                   python=python)

    label = f"fnd at {commit[:9]}" + (" " + " ".join(extra) if extra else "")
    return System(key, label, ("hello", "json"), start, f"fnd at {commit}")


def _fnd_version() -> str:
    with contextlib.suppress(Exception):
        from importlib.metadata import version
        return version("fnd")
    return "work tree"


def bare_system() -> System:
    @contextmanager
    def start(function: str, workdir: Path) -> Iterator[Running]:
        port = free_port()
        with serve([sys.executable, str(BENCH / "bare_aiohttp.py"), str(port)], port, "/",
                   workdir / f"bare-{port}.log", cwd=ROOT) as running:
            yield running  # any path answers hello world

    import aiohttp
    return System("bare-aiohttp", "bare aiohttp (ceiling)", ("hello",), start,
                  f"aiohttp {aiohttp.__version__}")


class Installs:
    """Where the peers are installed: a reused cache folder, or a temp folder (--fresh)."""

    def __init__(self, cache: Path | None) -> None:
        self.fresh = cache is None
        self.root = Path(tempfile.mkdtemp(prefix="fnd-peers-install-", dir="/tmp")) \
            if cache is None else cache
        self.root.mkdir(parents=True, exist_ok=True)

    def cleanup(self) -> None:
        if self.fresh:
            shutil.rmtree(self.root, ignore_errors=True)

    def twilio_run(self) -> tuple[Path, str]:
        prefix = self.root / "twilio-run"
        binary = prefix / "node_modules" / ".bin" / "twilio-run"
        if not binary.exists():
            print(f"installing twilio-run into {prefix} (npm) ...", flush=True)
            prefix.mkdir(parents=True, exist_ok=True)
            manifest = prefix / "package.json"  # npm 11 refuses --prefix without one
            if not manifest.exists():
                manifest.write_text('{"name": "fnd-peers", "version": "1.0.0", "private": true}\n')
            subprocess.run(["npm", "install", "--prefix", str(prefix), "twilio-run",
                            "--no-audit", "--no-fund", "--loglevel=error"],
                           check=True, timeout=900, stdout=subprocess.DEVNULL)
        meta = json.loads((prefix / "node_modules" / "twilio-run" / "package.json").read_text())
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
        return binary, f"twilio-run {meta['version']}, node {node.strip()}"

    def baseline(self, rev: str) -> tuple[Path, str]:
        """The python of a venv holding fnd at git revision `rev` of this checkout: its files
        exported with `git archive` (no worktree, the checkout is not changed) and installed
        with that revision's own scripts/setup-venv, both kept in the cache folder."""
        found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet",
                                f"{rev}^{{commit}}"], capture_output=True, text=True)
        if found.returncode != 0:
            raise SystemExit(f"--baseline {rev}: not a commit of the checkout at {ROOT}")
        commit = found.stdout.strip()
        tree, venv = self.root / f"fnd-{commit}", self.root / f"fnd-{commit}-venv"
        python = venv / "bin" / "python"
        if not (venv / "bin" / "fnd").exists():  # the install's last step: a whole install
            print(f"installing fnd at {commit[:9]} into {venv} ...", flush=True)
            shutil.rmtree(tree, ignore_errors=True)
            tree.mkdir(parents=True)
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit],
                                     check=True, capture_output=True, timeout=120).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True,
                           timeout=120)
            subprocess.run([str(tree / "scripts" / "setup-venv")], check=True, timeout=900,
                           cwd=tree, env={**os.environ, "FND_VENV": str(venv)},
                           stdout=subprocess.DEVNULL)
        return python, commit

    def functions_framework(self) -> tuple[Path, str]:
        venv = self.root / "ff-venv"
        binary = venv / "bin" / "functions-framework"
        if not binary.exists():
            print(f"installing functions-framework + gunicorn into {venv} (pip) ...", flush=True)
            subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, timeout=300)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "functions-framework",
                            "gunicorn"], check=True, timeout=900)
        versions = subprocess.run(
            [str(venv / "bin" / "python"), "-c",
             "from importlib.metadata import version as v; "
             "print(f\"functions-framework {v('functions-framework')}, "
             "gunicorn {v('gunicorn')}, flask {v('flask')}\")"],
            check=True, capture_output=True, text=True).stdout.strip()
        return binary, versions


def twilio_system(installs: Installs, fast: bool) -> System:
    binary, version = installs.twilio_run()
    flags = ["--no-fork-process", "--no-live", "--no-logs"] if fast else []

    @contextmanager
    def start(function: str, workdir: Path) -> Iterator[Running]:
        mode = "fast" if fast else "default"
        project = Path(tempfile.mkdtemp(prefix=f"twilio-{function}-{mode}-", dir=workdir))
        shutil.copytree(PEER_PROJECTS / "twilio", project, dirs_exist_ok=True)
        port = free_port()
        # twilio-run has no --host: the preload makes app.listen(port) bind 127.0.0.1 only.
        env = {"NODE_OPTIONS": f"--require {PEER_PROJECTS / 'loopback.js'}",
               "NO_UPDATE_NOTIFIER": "1", "NODE_ENV": "development"}
        with serve([str(binary), "start", str(project), "--port", str(port), *flags], port,
                   "/" + function, workdir / f"{project.name}.log", cwd=project,
                   env=env) as running:
            yield running

    if fast:
        return System("twilio-run-fast", "twilio-run --no-fork-process --no-live --no-logs",
                      ("hello", "json"), start, version)
    return System("twilio-run", "twilio-run (default: fork per request)", ("hello", "json"),
                  start, version)


def functions_framework_system(installs: Installs) -> System:
    binary, version = installs.functions_framework()
    targets = {"hello": "hello", "json": "hello_json"}

    @contextmanager
    def start(function: str, workdir: Path) -> Iterator[Running]:
        port = free_port()
        # gunicorn (gthread, THREADS defaults to 4 x cores) is its default server on Linux;
        # WORKERS is how its GunicornApplication takes the worker count.
        command = [str(binary), "--target", targets[function], "--source",
                   str(PEER_PROJECTS / "ff" / "main.py"), "--host", "127.0.0.1",
                   "--port", str(port)]
        with serve(command, port, "/" + function, workdir / f"ff-{function}-{port}.log",
                   cwd=workdir, env={"WORKERS": "2"}) as running:
            yield running  # the function answers every path

    return System("functions-framework", "functions-framework, gunicorn 2 workers",
                  ("hello", "json"), start, version)
