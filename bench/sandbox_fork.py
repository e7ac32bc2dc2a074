"""Fork -> sandboxed latency, measured the way the zygote does it (run as root).

    /opt/fnd-venv/bin/python bench/sandbox_fork.py [ROUNDS]

Imports the worker runtime first (like the zygote), prepares the sandbox once, then forks
ROUNDS workers: each calls setsid() and sandbox.apply() and reports its timestamps over a
pipe. Prints the median and p90 of fork alone, apply alone and fork -> sandboxed.
"""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable

import msgpack  # noqa: F401 - part of the zygote's runtime, so part of what fork copies
import twilio.rest  # noqa: F401

from fnd.daemon.sandbox.cgroups import Cgroups
from fnd.worker import sandbox

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.cgroup_wait import wait_empty  # noqa: E402 - the checkout's test helper

_TIMES = struct.Struct("dd")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    if os.geteuid() != 0:
        sys.exit("run as root: the uid change and the cgroups are part of the cost")
    root = tempfile.mkdtemp(prefix="fnd-bench-", dir="/tmp")
    os.chmod(root, 0o711)
    for sub in ("functions", "assets"):
        os.makedirs(os.path.join(root, "project", sub))
    cg = Cgroups.create(memory_bytes=256 << 20, pids_max=64, name=f"fnd-bench-{os.getpid()}")
    settings = {
        "project_dir": os.path.join(root, "project"),
        "scratch_root": os.path.join(root, "scratch"),
        "cgroup_dirs": cg.dir_templates(),
    }
    cg.slot_dirs(0)
    prepared = sandbox.prepare(settings)
    gc.freeze()
    try:
        bare = [_one(lambda _w: None) for _ in range(rounds)]
        full = [
            _one(lambda w: sandbox.apply(settings, 0, (w,), prepared), cg) for _ in range(rounds)
        ]
    finally:
        cg.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    _show("fork only (parent fork -> child running)", [b[0] for b in bare])
    _show("apply() in the child", [f[1] - f[0] for f in full])
    _show("fork -> sandboxed", [f[1] for f in full])


def _one(step: Callable[[int], object], cg: Cgroups | None = None) -> tuple[float, float]:
    r, w = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            running = time.perf_counter()
            step(w)
            done = time.perf_counter()
            os.write(w, _TIMES.pack(running - start, done - start))
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, _TIMES.size)
    os.close(r)
    os.waitpid(pid, 0)
    if cg is not None:
        wait_empty(cg, 0)
    running, done = _TIMES.unpack(data)
    return running, done


def _show(label: str, values: list[float]) -> None:
    ms = sorted(v * 1000 for v in values)
    p90 = ms[int(len(ms) * 0.9) - 1]
    print(f"{label:45s} median {statistics.median(ms):6.2f} ms   p90 {p90:6.2f} ms")


if __name__ == "__main__":
    main()
