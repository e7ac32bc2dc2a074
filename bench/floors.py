"""What this machine charges for the two things every fnd call is made of, whatever fnd's code.

    /opt/fnd-venv/bin/python bench/floors.py [--rounds 20000] [--forks 400]

1. The hop: one small message to another process over a pipe and one back (the daemon's
   INVOKE and the worker's RESULT), Python on both sides. Measured unpinned (as fnd runs),
   with the two processes pinned to different CPUs, and to the same CPU. On a VM the wake-up
   of an idle CPU is most of it.
2. Fork and exit: a process that has imported the worker runtime (what a forking worker of
   `isolation = "invocation"` is) forks a child that exits at once, then one that builds a
   TwiML answer first (a call's worth of Python), and reaps it. A bare interpreter is the
   comparison. Wall time and CPU (parent and children) per fork.

The last lines turn them into ceilings: the lowest p50 a hop can add at one connection, and
the most isolated calls per second that fork and exit alone leave on this machine's CPUs.
bench/RESULTS.md quotes them.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

_PROBE = r"""
import gc, os, resource, sys, time
if sys.argv[1] == "runtime":
    import fnd.worker.loop  # noqa: F401 - what a forking worker has loaded
    from fnd.worker.twilio_api import Twilio
    def call():
        twiml = Twilio.twiml.MessagingResponse()
        twiml.message("hello world")
        return str(twiml)
    call()
else:
    def call():
        return "hello world"
work = sys.argv[2] == "work"
gc.freeze()
def cycle(n):
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            if work:
                call()
            os._exit(0)
        os.waitpid(pid, 0)
n = int(sys.argv[3])
cycle(n // 10)
t0, s0, c0 = time.perf_counter(), resource.getrusage(0), resource.getrusage(-1)
cycle(n)
t1, s1, c1 = time.perf_counter(), resource.getrusage(0), resource.getrusage(-1)
cpu = lambda a, b: b.ru_utime - a.ru_utime + b.ru_stime - a.ru_stime
anon = [l.split()[1] for l in open("/proc/self/status") if l.startswith("RssAnon")][0]
print((t1 - t0) / n, cpu(s0, s1) / n, cpu(c0, c1) / n, int(anon) * 1024)
"""


def hop(rounds: int, parent_cpu: int | None, child_cpu: int | None) -> float:
    """Mean µs of one round trip of a 64-byte message between two Python processes."""
    to_child, from_parent = os.pipe()
    from_child, to_parent = os.pipe()
    message = b"x" * 64
    pid = os.fork()
    if pid == 0:
        try:
            if child_cpu is not None:
                os.sched_setaffinity(0, {child_cpu})
            for _ in range(rounds + 100):
                os.write(to_parent, os.read(to_child, 64))
        finally:
            os._exit(0)
    before = os.sched_getaffinity(0)
    try:
        if parent_cpu is not None:
            os.sched_setaffinity(0, {parent_cpu})
        for _ in range(100):  # both sides running and placed
            os.write(from_parent, message)
            os.read(from_child, 64)
        start = time.perf_counter()
        for _ in range(rounds):
            os.write(from_parent, message)
            os.read(from_child, 64)
        elapsed = time.perf_counter() - start
    finally:
        os.sched_setaffinity(0, before)
        os.waitpid(pid, 0)
        for fd in (to_child, from_parent, from_child, to_parent):
            os.close(fd)
    return elapsed / rounds * 1e6


def fork_cycle(kind: str, work: str, forks: int) -> tuple[float, float, float, int]:
    """(wall s, parent CPU s, children CPU s, parent's anonymous RSS) per fork, measured in a
    fresh interpreter (-P: fnd comes from the venv, as the workers' does)."""
    out = subprocess.run([sys.executable, "-P", "-c", _PROBE, kind, work, str(forks)],
                         check=True, capture_output=True, text=True, timeout=600).stdout
    wall, parent, children, anon = out.split()
    return float(wall), float(parent), float(children), int(anon)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20000, help="round trips per hop run")
    parser.add_argument("--forks", type=int, default=400, help="forks per fork run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; medians shown")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    gc.freeze()

    print(f"machine: {len(cpus)} CPUs, {os.uname().release}; medians of {args.repeat} runs")
    placements = [("unpinned (as fnd runs)", None, None)]
    if len(cpus) >= 2:
        placements.append((f"pinned to CPUs {cpus[0]} and {cpus[1]}", cpus[0], cpus[1]))
    placements.append((f"both pinned to CPU {cpus[0]}", cpus[0], cpus[0]))
    hops = {}
    for label, a, b in placements:
        runs = [hop(args.rounds, a, b) for _ in range(args.repeat)]
        hops[label] = statistics.median(runs)
        print(f"hop, pipe round trip, {label:<28} {hops[label]:7.1f} µs "
              f"(runs {', '.join(f'{r:.1f}' for r in runs)})")

    forks = {}
    for kind, work in (("bare", "exit"), ("runtime", "exit"), ("runtime", "work")):
        runs = [fork_cycle(kind, work, args.forks) for _ in range(args.repeat)]
        wall, parent, children = (statistics.median(r[i] for r in runs) for i in range(3))
        forks[(kind, work)] = (wall, parent + children)
        what = {"exit": "exits at once", "work": "builds a TwiML answer"}[work]
        print(f"fork + exit, {kind} interpreter ({runs[0][3] / 2**20:.1f} MiB anonymous), "
              f"child {what}: {wall * 1e3:.3f} ms wall, CPU parent {parent * 1e3:.3f} + "
              f"children {children * 1e3:.3f} ms")

    unpinned = hops[placements[0][0]]
    print(f"ceiling, one connection: each call's hop adds >= {unpinned:.0f} µs to bare "
          f"aiohttp's p50 here (a request/answer pair with no work on either side)")
    wall, cpu = forks[("runtime", "work")]
    print(f"ceiling, isolated calls: fork + a call's Python + exit cost {cpu * 1e3:.2f} ms of "
          f"CPU, so <= {len(cpus) / cpu:.0f} req/s on {len(cpus)} CPUs with nothing else "
          f"(no daemon, no HTTP, no checks); one at a time <= {1 / wall:.0f} req/s")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
