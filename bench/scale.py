"""Two fnd instances behind one nginx upstream: load goes through nginx, each instance counts.

    python bench/scale.py [--seconds 10] [--connections 64]

Starts two `fnd serve --unix` instances on the hello project, the shipped nginx site config
with both sockets in its upstream (loopback only), drives wrk through nginx for --seconds,
and prints each instance's invocation total from `fnd status --json` beside the total.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH, ROOT, readable_copy, wrk  # noqa: E402
from tests.nginx import running_nginx  # noqa: E402


@contextmanager
def fnd_on_unix_socket(project: Path, workdir: Path, name: str) -> Iterator[str]:
    """One fnd instance on workdir/<name>.sock; yields its control socket path."""
    http = workdir / f"{name}.sock"
    control = workdir / f"{name}-control.sock"
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-P", "-m", "fnd.cli", "serve", str(project), "--unix", str(http),
         "--control", str(control), "--workers-min", "2", "--workers-max", "2",
         "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket(socket.AF_UNIX) as probe:
                if probe.connect_ex(str(http)) == 0 and control.exists():
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fnd {name} did not start; see {workdir / name}.log")
            time.sleep(0.05)
        yield str(control)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        log.close()


def invocations(control: str) -> int:
    out = subprocess.run([sys.executable, "-P", "-m", "fnd.cli", "status", "--control", control,
                          "--json"], capture_output=True, text=True, cwd=ROOT, timeout=30)
    return int(json.loads(out.stdout)["totals"]["invocations"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    project = readable_copy(BENCH / "projects" / "hello")
    workdir = Path(tempfile.mkdtemp(prefix="fnd-scale-", dir="/tmp"))
    try:
        with ExitStack() as stack:
            controls = [stack.enter_context(fnd_on_unix_socket(project, workdir, name))
                        for name in ("a", "b")]
            sockets = [str(workdir / "a.sock"), str(workdir / "b.sock")]
            base = stack.enter_context(running_nginx(sockets, workdir / "nginx"))
            before = [invocations(c) for c in controls]
            load = wrk(base + "/hello", args.connections, args.seconds)
            served = [invocations(c) - b for c, b in zip(controls, before, strict=True)]
        total = sum(served)
        print(f"through nginx: {load.rps:.0f} req/s, p50 {load.p50_ms:.2f} ms, "
              f"p99 {load.p99_ms:.2f} ms, errors {load.errors}")
        for name, count in zip(("a", "b"), served, strict=True):
            print(f"instance {name}: {count} invocations ({100 * count / max(total, 1):.1f}%)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(project.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
