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
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH, ROOT, readable_copy, wrk  # noqa: E402
from fnd.author.launcher import ServeProcess  # noqa: E402
from tests.nginx import running_nginx  # noqa: E402


@contextmanager
def fnd_on_unix_socket(project: Path, workdir: Path, name: str) -> Iterator[tuple[str, str]]:
    """One fnd instance listening on workdir/<name>/http.sock; yields (http, control)."""
    folder = workdir / name
    folder.mkdir()
    with ServeProcess(project, ["--workers-min", "2", "--workers-max", "2"], unix=True,
                      folder=folder, log_file=folder / "fnd.log", cwd=ROOT) as daemon:
        yield str(folder / "http.sock"), daemon.control


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
            instances = [stack.enter_context(fnd_on_unix_socket(project, workdir, name))
                         for name in ("a", "b")]
            sockets = [http for http, _ in instances]
            controls = [control for _, control in instances]
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
