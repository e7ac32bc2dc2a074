"""Where the CPU goes, and the ceilings that implies on this machine (run as root).

    /opt/fnd-venv/bin/python bench/cpu_budget.py [--seconds 6] [--lives 100]

1. A worker's life, piece by piece, outside the daemon. A parent with the zygote's imports
   (and its gc.freeze, signal and logging set-up) forks children that stop after each
   stage: fork + exit; + sandbox.apply(); + the worker loop up to READY; + one invocation
   of a function that leaves a thread behind, then SIGKILL (what the daemon does). CPU per
   life is the child's rusage plus the parent's own CPU (fork copies the page tables in
   the parent); faults are the child's minor page faults (copy-on-write after fork).
2. The same path through the daemon: hey on fnd_limits /thread, 64 connections, and the
   CPU per request of the daemon, the zygote and the (reaped) workers, from /proc.
3. hello-world through the daemon with wrk: CPU per request of the daemon and the workers.

Every figure comes with the ceiling it implies: cores / CPU per request. Those ceilings are
what "close to the design's limit" is measured against in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import hey
from bench.peers_systems import PEER_PROJECTS, fnd
from fnd.daemon.sandbox.cgroups import Cgroups
from fnd.protocol import FrameDecoder, encode
from fnd.protocol import messages as m
from fnd.worker import loop as worker_loop
from fnd.worker import output, sandbox
from fnd.worker import zygote as _zygote  # noqa: F401 - the zygote's imports, so the same memory
from fnd.worker.sandbox import process as sandbox_process
from tests.cgroup_wait import wait_empty

CORES = os.cpu_count() or 1
STAGES = ("fork + exit", "+ sandbox", "+ ready", "+ invoke, kill")


class Lives:
    """A zygote stand-in: a sandbox-ready project, one cgroup slot, worker pipes."""

    def __init__(self, root: str) -> None:
        self.root = root
        project = os.path.join(root, "project")
        shutil.copytree(PEER_PROJECTS / "fnd_limits", project)
        os.makedirs(os.path.join(project, "assets"), exist_ok=True)
        for folder, _dirs, files in os.walk(root):  # the worker uid must read it
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
        self.cgroups = Cgroups.create(memory_bytes=256 << 20, pids_max=64,
                                      name=f"fnd-budget-{os.getpid()}")
        self.cgroups.slot_dirs(0)
        self.thread_file = os.path.join(project, "functions", "thread.py")
        self.config: m.WorkerConfig = {
            "project_dir": project, "functions": {"/thread": self.thread_file}, "assets": {},
            "sandbox": {"project_dir": project, "scratch_root": os.path.join(root, "scratch"),
                        "cgroup_dirs": self.cgroups.dir_templates()},
        }
        self.prepared = sandbox.prepare(self.config["sandbox"])

    def life(self, stage: int) -> tuple[float, int]:
        """One child up to `stage` (index in STAGES): (CPU seconds, child's minor faults)."""
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        before = resource.getrusage(resource.RUSAGE_SELF)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            self._child(stage, cmd_r, res_w)
        os.close(cmd_r)
        os.close(res_w)
        decoder = FrameDecoder()
        if stage >= 2:
            _until(res_r, decoder, m.READY)
        if stage >= 3:
            os.write(cmd_w, encode({
                "t": m.INVOKE, "id": "budget", "timeout": 5.0, "event": {}, "context": {},
                "function": {"name": "/thread", "file": self.thread_file}}))
            _until(res_r, decoder, m.DONE)
            os.kill(pid, signal.SIGKILL)
        os.close(cmd_w)
        _pid, _status, child = os.wait4(pid, 0)
        after = resource.getrusage(resource.RUSAGE_SELF)
        os.close(res_r)
        wait_empty(self.cgroups, 0)
        parent = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return child.ru_utime + child.ru_stime + parent, child.ru_minflt

    def _child(self, stage: int, cmd_r: int, res_w: int) -> None:
        try:
            if stage >= 1:
                os.setsid()
                layers = sandbox.apply(self.config["sandbox"], 0, (cmd_r, res_w), self.prepared)
            if stage >= 2:
                worker_loop.serve(cmd_r, res_w, self.config, layers)
        finally:
            os._exit(0)

    def close(self) -> None:
        self.cgroups.cleanup()


def _until(fd: int, decoder: FrameDecoder, kind: str) -> None:
    while True:
        data = os.read(fd, 1 << 16)
        if not data:
            raise RuntimeError(f"worker closed its result pipe before {kind}")
        if any(message["t"] == kind for message in decoder.feed(data)):
            return


def worker_lives(count: int) -> None:
    root = tempfile.mkdtemp(prefix="fnd-budget-", dir="/tmp")
    os.chmod(root, 0o711)
    lives = Lives(root)
    sandbox_process.reset_signals()
    output.set_log_levels()
    gc.collect()
    gc.freeze()
    print(f"1. one worker life, piece by piece ({count} lives each, medians; "
          f"ceiling = {CORES} cores / CPU):")
    try:
        for stage, name in enumerate(STAGES):
            samples = [lives.life(stage) for _ in range(count)]
            cpu = statistics.median(s[0] for s in samples)
            faults = statistics.median(s[1] for s in samples)
            print(f"   {name:16s} CPU {cpu * 1000:5.2f} ms  faults {faults:5.0f}  "
                  f"ceiling {CORES / cpu:6.0f} lives/s")
    finally:
        lives.close()
        shutil.rmtree(root, ignore_errors=True)


def _cpu(process: psutil.Process) -> tuple[float, float]:
    times = process.cpu_times()
    return times.user + times.system, times.children_user + times.children_system


def _own_cpu(process: psutil.Process) -> float:
    try:
        return _cpu(process)[0]
    except psutil.NoSuchProcess:
        return 0.0  # reaped: its whole CPU is now in the zygote's children figure


def _busy() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _measure(project: Path, workers: int, probe: str,
             load: Callable[[str], int]) -> tuple[int, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="fnd-budget-") as workdir, \
            fnd(project, Path(workdir), workers, probe=probe) as running:
        daemon = psutil.Process(running.pid)
        zygote = next(c for c in daemon.children() if "fnd.worker.zygote" in " ".join(c.cmdline()))
        first = zygote.children()
        start = (_own_cpu(daemon), *_cpu(zygote), sum(_own_cpu(w) for w in first), _busy())
        requests = load(running.base)
        end = (_own_cpu(daemon), *_cpu(zygote), sum(_own_cpu(w) for w in first), _busy())
    spent = [b - a for a, b in zip(start, end, strict=True)]
    # Workers: the first ones' CPU since the start (those reaped meanwhile appear, whole, in
    # the zygote's children figure, hence the subtraction) plus every later worker's.
    return requests, {"daemon": spent[0], "zygote": spent[1],
                      "workers": spent[2] + spent[3], "whole machine": spent[4]}


def _show(requests: int, spent: dict[str, float], unit: float, label: str) -> None:
    parts = "  ".join(f"{name} {seconds / requests / unit:.{1 if unit < 1e-3 else 2}f}"
                      for name, seconds in spent.items())
    whole = spent["whole machine"] / requests
    print(f"   {label} per request: {parts}  -> ceiling {CORES / whole:,.0f} req/s "
          f"({CORES} cores), daemon alone {1 / (spent['daemon'] / requests):,.0f} req/s")


def refork_load(seconds: int) -> None:
    def load(base: str) -> int:
        result = hey(base + "/thread", seconds, 64)
        print(f"   hey -c 64 /thread: {result.line()}")
        return result.total
    print("2. kill + re-fork through the daemon (2 workers, every request leaves a thread):")
    requests, spent = _measure(PEER_PROJECTS / "fnd_limits", 2, "/ok", load)
    _show(requests, spent, 1e-3, "CPU ms")


def hello_load(seconds: int) -> None:
    def load(base: str) -> int:
        out = subprocess.run(["wrk", "-t1", "-c64", f"-d{seconds}s", base + "/hello"],
                             check=True, capture_output=True, text=True).stdout
        found = re.search(r"(\d+) requests in", out)
        rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
        print(f"   wrk -c 64 /hello: {rate.group(1) if rate else '?'} req/s")
        return int(found.group(1)) if found else 1
    print("3. hello-world through the daemon (4 workers):")
    requests, spent = _measure(PEER_PROJECTS / "fnd", 4, "/hello", load)
    _show(requests, spent, 1e-6, "CPU us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--lives", type=int, default=100)
    parser.add_argument("--parts", default="1,2,3",
                        help="which parts to run, e.g. 3 for hello-world alone")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: uids and cgroups are part of the cost")
    parts = set(args.parts.split(","))
    if "1" in parts:
        worker_lives(args.lives)
    if "2" in parts:
        refork_load(args.seconds)
    if "3" in parts:
        hello_load(args.seconds)


if __name__ == "__main__":
    main()
