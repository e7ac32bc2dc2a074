"""Soak: hold ~4x the pool's capacity against a 50 ms function and check nothing is lost.

    python bench/soak.py [--seconds 60] [--workers 4] [--factor 4] [--connections 64]

Capacity is workers / 50 ms (80 req/s with 4 workers). hey offers `factor` times that, spread
over `connections` rate-limited connections; the queue is kept short (--queue-max) so the
excess is answered 503 at once instead of waiting. Passes when every response is 200 or 503,
there are no socket errors, and the daemon logged one invocation per response (give or take
the requests hey abandoned at its deadline). Prints the daemon's RSS at start and end.
Loopback only; bounded by --seconds.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH, fnd_server  # noqa: E402
from bench.load import Daemon, Result, hey  # noqa: E402

PROJECT = BENCH / "projects" / "supervision"
SLEEP_S = 0.05


def parser(description: str | None = __doc__) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--factor", type=float, default=4.0, help="offered load / capacity")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--queue-max", type=int, default=16)
    return parser


def fnd_args(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    return (["--workers-min", str(args.workers), "--workers-max", str(args.workers)],
            {"FND_QUEUE_MAX": str(args.queue_max)})


def overload(port: int, args: argparse.Namespace) -> Result:
    capacity = args.workers / SLEEP_S
    rate = args.factor * capacity / args.connections
    print(f"capacity {capacity:.0f} req/s; offering {args.factor:g}x = "
          f"{args.connections} connections x {rate:.2f} req/s for {args.seconds} s")
    return hey(f"http://127.0.0.1:{port}/sleep", args.seconds, args.connections, rate)


class RssSampler:
    """The daemon's RSS once a second while the load runs (flat is the goal)."""

    def __init__(self, daemon: Daemon) -> None:
        self.samples = [daemon.rss_mb()]
        self._daemon = daemon
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append(self._daemon.rss_mb())

    def stop(self) -> str:
        self._stop.set()
        self._thread.join()
        self.samples.append(self._daemon.rss_mb())
        tenth = self.samples[max(1, len(self.samples) // 10)]
        first, last = self.samples[0], self.samples[-1]
        return (f"daemon RSS MiB: start {first:.1f}, after 10% {tenth:.1f}, "
                f"end {last:.1f} ({last - first:+.1f}), max {max(self.samples):.1f}")


def check(ok: bool, text: str) -> bool:
    print(f"  [{'ok' if ok else 'FAIL'}] {text}")
    return ok


def accounting(result: Result, daemon: Daemon, connections: int) -> list[bool]:
    """Every response hey saw was logged once by the daemon, and nothing else went missing."""
    logged = len(daemon.lines("invocation")) - 1  # minus the start-up self-check
    abandoned = logged - result.total  # hey drops the calls in flight at its deadline
    return [
        check(not result.errors, f"socket errors: {result.errors or 0}"),
        check(0 <= abandoned <= connections,
              f"daemon logged {logged} invocations for {result.total} responses "
              f"({abandoned} in flight when hey stopped)"),
    ]


def main() -> int:
    args = parser().parse_args()
    flags, env = fnd_args(args)
    with fnd_server(PROJECT, *flags, env=env) as port:
        daemon = Daemon.on_port(port)
        rss = RssSampler(daemon)
        result = overload(port, args)
        print(result.line())
        print(rss.stop())
        status = daemon.status()
        print(f"daemon totals: {status['totals']}; restarts {status['restarts']}")
        results = [check(set(result.statuses) <= {200, 503},
                         f"statuses only 200/503: {sorted(result.statuses)}")]
        results += accounting(result, daemon, args.connections)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
