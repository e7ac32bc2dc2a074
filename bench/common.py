"""Shared bench plumbing: start servers on loopback, run wrk, parse its numbers."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnd.author.launcher import ServeProcess, world_readable_copy

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def readable_copy(project: Path) -> Path:
    """Sandboxed workers run as other uids: give them a world-readable copy of the project."""
    return world_readable_copy(project, "fnd-bench-")


@dataclass
class FndInstance:
    """A running `fnd serve`: where it listens, its pid, control socket and JSON log file."""

    port: int
    pid: int
    control: str
    log: Path

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict):
                    lines.append(line)
        return lines


@contextmanager
def fnd_instance(project: Path, *args: str, env: dict[str, str] | None = None
                 ) -> Iterator[FndInstance]:
    """fnd's launcher on a readable copy of `project`, on a free port, logging to a file
    (parsed only when asked: nothing in this process competes with the load)."""
    port = free_port()  # on the command line: bench/load.py finds the daemon by it
    copy = readable_copy(project)
    log = copy.parent / "fnd.log"
    try:
        with ServeProcess(copy, ["--port", str(port), *args], env, folder=copy.parent,
                          log_file=log, cwd=ROOT) as daemon:
            yield FndInstance(port, daemon.pid, daemon.control, log)
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


@contextmanager
def fnd_server(project: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[int]:
    with fnd_instance(project, *args, env=env) as instance:
        yield instance.port


@contextmanager
def bare_server() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(BENCH / "bare_aiohttp.py"), str(port)],
                               stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, connections: int, seconds: int = 10, threads: int = 1) -> Load:
    """One wrk run (loopback only, bounded in time)."""
    out = subprocess.run(
        ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s",
         "--latency", url],
        check=True, capture_output=True, text=True, timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # Anchored: a "+/- Stdev" figure such as 91.50% must not pass for the 50% line.
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    for match in re.finditer(r"(?:connect|read|write|timeout) (\d+)", out):
        errors += int(match.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return Load(rps, p50, p99, errors)


def print_table(rows: list[tuple[str, Load]], baseline: Load | None = None) -> None:
    print(f"{'target':<34} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'ratio':>7}")
    for name, load in rows:
        ratio = f"{load.rps / baseline.rps:.2f}" if baseline else ""
        print(f"{name:<34} {load.rps:>10.0f} {load.p50_ms:>8.3f} {load.p99_ms:>8.3f} "
              f"{load.errors:>7} {ratio:>7}")


def dump(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=lambda o: o.__dict__))
