"""fnd's own figures for bench/peers.py: worker start, idle worker memory, 504 precision and
the kill + re-fork path. Every server here is fnd in production config (bench.peers_systems.fnd).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.common import BENCH, ROOT
from bench.load import Result, hey
from bench.peers_systems import PEER_PROJECTS, PeakPss, fnd, http_get, tree, wrk
from fnd.ctl.client import request as control_request

MB = 1e6
LIMITS = PEER_PROJECTS / "fnd_limits"


@dataclass
class Refork:
    workers: int
    load: Result  # hey: counts every status
    responses: int
    reforks: int  # workers that exited during the run
    start_ms: list[float]  # the daemon's spawn -> ready for the workers forked during the run
    peak_pss: int

    @property
    def ok_rps(self) -> float:
        return self.load.statuses.get(200, 0) / self.load.seconds if self.load.seconds else 0.0


@dataclass
class Figures:
    workers: int = 0
    idle_uss: list[int] = field(default_factory=list)  # per worker, after serving hello
    idle_pss: list[int] = field(default_factory=list)
    daemon_uss: int = 0
    zygote_uss: int = 0
    idle_tree_pss: int = 0
    kill_to_ready_ms: list[float] = field(default_factory=list)  # SIGKILL -> status sees it idle
    start_ms_idle: list[float] = field(default_factory=list)  # the daemon's log, same workers
    overshoot_ms: list[float] = field(default_factory=list)  # response time - 1 s limit
    spin_statuses: list[int] = field(default_factory=list)
    reforks: list[Refork] = field(default_factory=list)
    sandbox_fork: str = ""
    sandbox: str = ""


def status(control: str) -> dict[str, Any]:
    return asyncio.run(control_request(control, {"cmd": "status"}))


def log_lines(path: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("event") == event:
            found.append(line)
    return found


async def _wait_replaced(control: str, victim: int, workers: int, timeout: float = 10.0) -> None:
    """Poll the control socket until every worker is idle again and the victim is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = await control_request(control, {"cmd": "status"})
        pids = {w["pid"] for w in answer["per_worker"] if w["state"] == "idle"}
        if victim not in pids and len(pids) == workers:
            return
        await asyncio.sleep(0.0005)
    raise RuntimeError(f"no replacement for worker {victim} within {timeout} s")


def idle_and_start(figures: Figures, workdir: Path, workers: int = 8, kills: int = 10) -> None:
    """Idle memory of a production pool that served hello-world; SIGKILL -> replacement ready."""
    figures.workers = workers
    with fnd(PEER_PROJECTS / "fnd", workdir, workers) as running:
        assert running.control
        wrk(running.base + "/hello", 64, 3)  # every worker loads the function
        time.sleep(1.5)
        answer = status(running.control)
        figures.sandbox = str(answer.get("sandbox"))
        pids = {w["pid"] for w in answer["per_worker"]}
        for process in tree(running.pid):
            info = process.memory_full_info()
            if process.pid in pids:
                figures.idle_uss.append(info.uss)
                figures.idle_pss.append(info.pss)
            elif process.pid == running.pid:
                figures.daemon_uss = info.uss
            else:
                figures.zygote_uss = info.uss
        figures.idle_tree_pss = PeakPss(running.pid).sample()
        victims = []
        for _ in range(kills):
            victim = next(w["pid"] for w in status(running.control)["per_worker"]
                          if w["state"] == "idle")
            victims.append(victim)
            begin = time.perf_counter()
            os.kill(victim, signal.SIGKILL)
            asyncio.run(_wait_replaced(running.control, victim, workers))
            figures.kill_to_ready_ms.append((time.perf_counter() - begin) * 1000)
            time.sleep(0.2)
        log = running.log
    ready = log_lines(log, "worker ready")
    figures.start_ms_idle = [float(line["start_ms"]) for line in ready[workers:]]


def spin_504(figures: Figures, workdir: Path, requests: int = 10) -> None:
    """A function that never calls back, limit 1 s: how late is the 504?"""
    with fnd(LIMITS, workdir, 2, "--timeout", "1", probe="/ok") as running:
        for _ in range(requests):
            begin = time.perf_counter()
            code, _ = http_get(running.base + "/spin", timeout=30)
            figures.overshoot_ms.append((time.perf_counter() - begin - 1.0) * 1000)
            figures.spin_statuses.append(code)
            time.sleep(0.1)


def refork(figures: Figures, workdir: Path, workers: int, seconds: int) -> None:
    """Every request leaves a thread behind: the worker is killed and re-forked each time."""
    with fnd(LIMITS, workdir, workers, probe="/ok") as running:
        before = len(log_lines(running.log, "worker ready"))
        load = hey(running.base + "/thread", seconds, 64)
        time.sleep(0.5)
        invocations = len([line for line in log_lines(running.log, "invocation")
                           if line.get("function") == "/thread"])
        exits = len(log_lines(running.log, "worker exited"))
        ready = log_lines(running.log, "worker ready")[before:]
        with PeakPss(running.pid) as pss:  # apart: sampling smaps slows the timed run
            hey(running.base + "/thread", 3, 64)
    figures.reforks.append(Refork(workers, load, invocations, exits,
                                  [float(line["start_ms"]) for line in ready], pss.peak))


def sandbox_fork(figures: Figures, rounds: int = 100) -> None:
    """The isolated fork -> sandboxed figure from bench/sandbox_fork.py (no daemon, no pipes)."""
    out = subprocess.run([sys.executable, str(BENCH / "sandbox_fork.py"), str(rounds)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    figures.sandbox_fork = (out.stdout.strip() or out.stderr.strip()[-500:])


def measure(workdir: Path, seconds: int) -> Figures:
    figures = Figures()
    steps: list[tuple[str, Callable[[], None]]] = [
        ("idle memory + worker start", lambda: idle_and_start(figures, workdir)),
        ("504 precision", lambda: spin_504(figures, workdir)),
        ("kill + re-fork, 2 workers", lambda: refork(figures, workdir, 2, seconds)),
        ("kill + re-fork, 8 workers", lambda: refork(figures, workdir, 8, seconds)),
        ("bench/sandbox_fork.py", lambda: sandbox_fork(figures)),
    ]
    for name, step in steps:
        print(f"fnd figures: {name} ...", flush=True)
        try:
            step()
        except (RuntimeError, subprocess.SubprocessError, OSError, psutil.Error) as exc:
            print(f"  failed: {exc}", flush=True)
    return figures


def _spread(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    p90 = ordered[max(0, int(len(ordered) * 0.9) - 1)]
    return (f"median {statistics.median(ordered):.1f}, p90 {p90:.1f}, max {ordered[-1]:.1f} "
            f"(n={len(ordered)})")


def report(figures: Figures) -> list[str]:
    lines = [f"fnd's own figures (production config, sandbox {figures.sandbox or '?'})"]
    if figures.idle_uss:
        uss = [u / MB for u in figures.idle_uss]
        lines += [
            f"  idle worker USS, {figures.workers} workers after hello-world: median "
            f"{statistics.median(uss):.1f} MB, max {max(uss):.1f} MB (PSS median "
            f"{statistics.median(p / MB for p in figures.idle_pss):.1f} MB)",
            f"  daemon USS {figures.daemon_uss / MB:.1f} MB, zygote USS "
            f"{figures.zygote_uss / MB:.1f} MB, whole tree PSS idle "
            f"{figures.idle_tree_pss / MB:.1f} MB",
        ]
    if figures.kill_to_ready_ms:
        lines += [
            "  worker start, idle pool: daemon's spawn -> ready (log start_ms) ms: "
            + _spread(figures.start_ms_idle),
            "  worker start, idle pool: SIGKILL -> replacement idle in `fnd status` ms: "
            + _spread(figures.kill_to_ready_ms),
        ]
    for run in figures.reforks:
        lines.append(
            f"  worker start under the kill + re-fork load ({run.workers} workers) ms: "
            + _spread(run.start_ms))
    if figures.sandbox_fork:
        lines.append("  bench/sandbox_fork.py 100 (fork -> sandboxed, no daemon):")
        lines += ["    " + line for line in figures.sandbox_fork.splitlines()]
    if figures.overshoot_ms:
        codes = sorted(set(figures.spin_statuses))
        lines.append(f"  504 precision, --timeout 1, {len(figures.overshoot_ms)} requests "
                     f"(statuses {codes}): response - 1 s in ms: "
                     + _spread(figures.overshoot_ms))
    for run in figures.reforks:
        lines.append(
            f"  kill + re-fork path, {run.workers} workers, hey 64 connections: "
            f"{run.load.line()}; {run.responses} invocations logged, {run.reforks} workers "
            f"exited; peak PSS {run.peak_pss / MB:.1f} MB")
    return lines
