"""What the sandbox costs, measured through the real daemon (run as root, as production does).

    /opt/fnd-venv/bin/python bench/sandbox.py [--rounds 50] [--seconds 10] [--pairs 2]

1. Worker start: SIGKILL one idle worker at a time (pids from the control socket) and wait
   for its replacement's "worker ready" log line. Its ``start_ms`` is the daemon's own clock
   from deciding to spawn to the READY frame: cgroup, pipes, the zygote's fork, every sandbox
   layer, the worker loop's set-up. "replaced" is kill -> that line, seen from outside (it adds
   noticing the death). bench/sandbox_fork.py then times fork -> sandboxed alone.
2. Idle worker USS (psutil ``memory_full_info().uss``; the zygote calls ``gc.freeze()``):
   fresh replacements that served nothing, then the same workers after a short hello load.
3. Hello-world (wrk, 64 connections) with ``sandbox = "strict"`` and "permissive", alternated
   --pairs times. Where every layer applies, permissive applies them too (it only stops
   refusing when one fails), so this checks that the mode itself costs nothing. req/s swings
   with whatever else the host runs; CPU time per request (daemon + workers) barely does.
4. The layers' own hot-path cost: seccomp's per-syscall filter, timed on a cheap syscall
   before and after loading the same filter (Landlock is only consulted on path lookups).
Targets (docs/sandbox.md#costs): start <= 5 ms, idle USS <= 3 MiB, throughput cost <= 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH, FndInstance, Load, fnd_instance, wrk  # noqa: E402
from fnd.ctl.client import request  # noqa: E402
from fnd.worker.sandbox import seccomp as sandbox_seccomp  # noqa: E402
from fnd.worker.sandbox.libc import PR_SET_NO_NEW_PRIVS, prctl  # noqa: E402

HELLO = BENCH / "projects" / "hello"
MiB = 1024 * 1024


def status(fnd: FndInstance) -> dict[str, Any]:
    return asyncio.run(request(fnd.control, {"cmd": "status"}))


def idle_pids(fnd: FndInstance) -> list[int]:
    return [w["pid"] for w in status(fnd)["per_worker"] if w["state"] == "idle" and w["pid"]]


def ready_lines(fnd: FndInstance) -> dict[int, dict[str, Any]]:
    return {line["pid"]: line for line in fnd.log_lines() if line.get("event") == "worker ready"}


def measure_starts(fnd: FndInstance, rounds: int) -> tuple[list[float], list[float]]:
    """(start_ms from the daemon's log, kill -> ready line seen) for `rounds` replacements."""
    starts: list[float] = []
    replaced: list[float] = []
    for _ in range(rounds):
        known = set(ready_lines(fnd))
        victim = idle_pids(fnd)[0]
        began = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        deadline = began + 10
        while not (fresh := set(ready_lines(fnd)) - known):
            if time.perf_counter() > deadline:
                sys.exit("no 'worker ready' log line after killing a worker")
            time.sleep(0.0005)  # polling the log file, not synchronising on time
        replaced.append((time.perf_counter() - began) * 1000)
        starts.append(float(ready_lines(fnd)[fresh.pop()]["start_ms"]))
        while len(idle_pids(fnd)) < 2:  # the next victim must not be the newcomer's twin
            time.sleep(0.001)
    return starts, replaced


def uss_mib(pids: list[int]) -> list[float]:
    return [psutil.Process(pid).memory_full_info().uss / MiB for pid in pids]


def seccomp_ns_per_syscall(calls: int = 300_000) -> tuple[float, float]:
    """ns per getppid() in a child, before and after loading fnd's seccomp filter."""
    flt = sandbox_seccomp.build(network=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            getppid = ctypes.CDLL(None).getppid  # straight to the syscall, no Python caching
            prctl(PR_SET_NO_NEW_PRIVS, 1)
            before = _time_calls(getppid, calls)
            flt.load()
            after = _time_calls(getppid, calls)
            os.write(w, f"{before} {after}".encode())
        finally:
            os._exit(0)
    os.close(w)
    before, after = (float(x) for x in os.read(r, 100).split())
    os.close(r)
    os.waitpid(pid, 0)
    return before, after


def _time_calls(call: Any, calls: int) -> float:
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter_ns()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter_ns() - began) / calls)
    return best


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def throughput(mode: str, seconds: int) -> tuple[Load, float, dict[str, str]]:
    """wrk on a fresh daemon: (load, CPU µs per request in daemon + workers, layers)."""
    args = ["--workers-min", "2", "--workers-max", "2"]
    for attempt in range(2):
        with fnd_instance(HELLO, *args, env={"FND_SANDBOX": mode}) as fnd:
            url = f"http://127.0.0.1:{fnd.port}/hello"
            workers = status(fnd)["per_worker"]
            pids = [fnd.pid, *(w["pid"] for w in workers)]
            try:
                wrk(url, 8, 2)  # warm-up
                before = cpu_seconds(pids)
                load = wrk(url, 64, seconds)
            except ValueError as exc:  # wrk saw no answer at all (a busy shared host)
                print(f"  {mode}: wrk failed ({exc}); {'retrying' if not attempt else 'giving up'}")
                continue
            cpu_us = (cpu_seconds(pids) - before) / max(1.0, load.rps * seconds) * 1e6
            return load, cpu_us, workers[0]["layers"]
    sys.exit("wrk failed twice")


def show(label: str, values: list[float], unit: str) -> None:
    ordered = sorted(values)
    p90 = ordered[math.ceil(len(ordered) * 0.9) - 1]  # nearest rank
    print(f"  {label:44s} median {statistics.median(ordered):7.2f} {unit}   "
          f"p90 {p90:7.2f} {unit}   (n={len(ordered)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50, help="workers to kill and replace")
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--fork-rounds", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=2, help="strict/permissive run pairs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the uid change and the cgroups are part of the cost")

    print("1. worker start (strict sandbox, through fnd serve)")
    with fnd_instance(HELLO, "--workers-min", "2", "--workers-max", "2") as fnd:
        starts, replaced = measure_starts(fnd, args.rounds)
        fresh_uss = uss_mib(idle_pids(fnd))  # replacements: they have served nothing yet
        show("spawn -> READY (daemon's start_ms)", starts, "ms")
        show("SIGKILL -> replacement ready (outside)", replaced, "ms")
        wrk(f"http://127.0.0.1:{fnd.port}/hello", 8, 2)
        warm_uss = uss_mib(idle_pids(fnd))
    print("   fork -> sandboxed alone (bench/sandbox_fork.py, the zygote's way):")
    fork = subprocess.run([sys.executable, str(BENCH / "sandbox_fork.py"),
                           str(args.fork_rounds)], capture_output=True, text=True, check=True)
    print("".join(f"  {line}\n" for line in fork.stdout.splitlines()), end="")

    print("2. idle worker USS (zygote gc.freeze()d)")
    show("fresh idle workers (served nothing)", fresh_uss, "MiB")
    show("after serving hello-world", warm_uss, "MiB")

    print(f"3. hello-world, 64 connections, {args.seconds} s per run, alternated")
    runs: dict[str, list[float]] = {"strict": [], "permissive": []}
    cpu: dict[str, list[float]] = {"strict": [], "permissive": []}
    layers: dict[str, dict[str, str]] = {}
    for mode in ("strict", "permissive") * args.pairs:
        load, cpu_us, layers[mode] = throughput(mode, args.seconds)
        runs[mode].append(load.rps)
        cpu[mode].append(cpu_us)
        print(f"  {mode:12s} {load.rps:9.0f} req/s  p50 {load.p50_ms:.3f} ms  "
              f"p99 {load.p99_ms:.3f} ms  errors {load.errors}  "
              f"CPU {cpu_us:.1f} us/request")
    strict, permissive = (statistics.median(runs[m]) for m in ("strict", "permissive"))
    strict_cpu, permissive_cpu = (statistics.median(cpu[m]) for m in ("strict", "permissive"))
    # The scratch path names the daemon's pid; every other layer must read the same.
    strict_layers, permissive_layers = ({k: v for k, v in layers[m].items() if k != "scratch"}
                                        for m in ("strict", "permissive"))
    same = "identical" if strict_layers == permissive_layers else "DIFFERENT"
    print(f"  median strict {strict:.0f} vs permissive {permissive:.0f} req/s: "
          f"cost {(1 - strict / permissive) * 100:+.1f} %; CPU per request "
          f"{strict_cpu:.1f} vs {permissive_cpu:.1f} us (layers applied: {same})")

    print("4. seccomp filter, per syscall (getppid in a child)")
    before, after = seccomp_ns_per_syscall()
    print(f"  without {before:.0f} ns, with {after:.0f} ns: +{after - before:.0f} ns per syscall")


if __name__ == "__main__":
    main()
