"""Chaos: worker kills under load, and a mix that forces kill + re-fork.

    python bench/chaos.py kill [--seconds 60] [--workers 4] [--every 0.1]
    python bench/chaos.py leftovers [--seconds 30] [--workers 4] [--connections 64]

kill: the soak load (~4x capacity, see soak.py) while a loop SIGKILLs a random serving worker
every --every seconds. Passes when the statuses are only 200/502/503, the daemon logged one
502 per killed busy worker (and hey saw exactly those), there are no socket errors, and the
pool was back at workers_min within 100 ms of every kill (the distribution is printed: time
from the kill to the replacement's "worker ready" log line).

leftovers: wrk at full speed on a mix where --share (10%) of the requests leave a thread
running after their answer, so their worker is killed and a new one forked; the rest is
hello-world. Prints req/s (target: 1,200 on 2 cores) and how many workers were replaced.
Loopback only; bounded by --seconds.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fnd_server  # noqa: E402
from bench.load import Daemon, epoch, percentiles, wrk_mix  # noqa: E402
from bench.soak import PROJECT, RssSampler, accounting, check, fnd_args, overload, parser  # noqa: E402

REPLACED_WITHIN_MS = 100.0
LEFTOVER_TARGET_RPS = 1200.0


class Killer:
    """SIGKILLs a random serving (idle or busy) worker every `every` seconds."""

    def __init__(self, daemon: Daemon, every: float) -> None:
        self.kills: list[tuple[float, int, str]] = []  # (time.time(), pid, state seen)
        self._daemon = daemon
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            serving = [w for w in self._daemon.status()["per_worker"]
                       if w["state"] in ("idle", "busy") and not w["leaving"] and w["pid"]]
            if not serving:
                continue
            victim = random.choice(serving)
            try:
                os.kill(victim["pid"], signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills.append((time.time(), victim["pid"], victim["state"]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def replacement_ms(kills: list[tuple[float, int, str]], readies: list[float]) -> list[float]:
    """For each kill, ms until the next replacement was ready (each ready used once)."""
    gaps, pending = [], sorted(readies)
    for killed_at, _pid, _state in sorted(kills):
        # Log timestamps have ms resolution: a ready stamped in the kill's millisecond counts.
        while pending and pending[0] < killed_at - 0.001:
            pending.pop(0)
        if pending:
            gaps.append(max(0.0, pending.pop(0) - killed_at) * 1000)
    return gaps


def _show_failures(daemon: Daemon, limit: int = 5) -> None:
    """Calls that did not end in 200 or 503, with the daemon's reason; 499s (queued calls
    whose connection the load tool closed as it stopped, never run) are only counted."""
    lines = daemon.lines("invocation")
    gone = sum(1 for line in lines if line.get("status") == 499)
    if gone:
        print(f"  {gone} queued call(s) dropped when the load tool hung up at its deadline (499)")
    shown = [line for line in lines if line.get("status") not in (200, 499, 503)]
    for line in shown[:limit]:
        print(f"  {line.get('status')} {line.get('path')}: {line.get('reason')}")
    if len(shown) > limit:
        print(f"  ... and {len(shown) - limit} more")


def run_kill(args: argparse.Namespace) -> int:
    flags, env = fnd_args(args)
    with fnd_server(PROJECT, *flags, env=env) as port:
        daemon = Daemon.on_port(port)
        rss = RssSampler(daemon)
        killer = Killer(daemon, args.every)
        result = overload(port, args)
        killer.stop()
        settle = time.monotonic() + 5
        while daemon.status()["workers"]["idle"] < args.workers:
            if time.monotonic() > settle:
                break
            time.sleep(0.05)  # the last replacement's start, polled
        print(result.line())
        print(rss.stop())
        status = daemon.status()
        crashed = [line for line in daemon.lines("invocation") if line.get("status") == 502]
        exits = [line for line in daemon.lines("worker exited") if line.get("cause") == "signal"]
        readies = [epoch(line["timestamp"]) for line in daemon.lines("worker ready")]
        gaps = replacement_ms(killer.kills, readies)
        busy = sum(1 for kill in killer.kills if kill[2] == "busy")
        print(f"kills: {len(killer.kills)} ({busy} seen busy); daemon: {len(exits)} worker "
              f"deaths by signal, {len(crashed)} calls answered 502")
        print(f"daemon totals: {status['totals']}; restarts {status['restarts']}")
        print(f"kill -> replacement ready, ms: {percentiles(gaps)} "
              f"(over {len(gaps)} kills)")
        results = [
            check(set(result.statuses) <= {200, 502, 503},
                  f"statuses only 200/502/503: {sorted(result.statuses)}"),
            check(result.statuses.get(502, 0) == len(crashed) <= len(killer.kills),
                  f"502s seen by hey {result.statuses.get(502, 0)} = logged {len(crashed)} "
                  f"<= kills {len(killer.kills)}"),
            check(len(exits) == len(killer.kills), "every kill classified as a signal death"),
            check(len(gaps) == len(killer.kills)
                  and max(gaps, default=0) <= REPLACED_WITHIN_MS,
                  f"back at workers_min within {REPLACED_WITHIN_MS:.0f} ms of every kill"),
        ]
        results += accounting(result, daemon, args.connections)
    return 0 if all(results) else 1


def run_leftovers(args: argparse.Namespace) -> int:
    most = str(args.workers_max or args.workers)
    with fnd_server(PROJECT, "--workers-min", str(args.workers), "--workers-max", most) as port:
        daemon = Daemon.on_port(port)
        base = f"http://127.0.0.1:{port}"
        wrk_mix(base, "/leak", "/hello", args.share, 2, 8)
        before = daemon.status()["restarts"].get("unclean", 0)
        result = wrk_mix(base, "/leak", "/hello", args.share,
                         args.seconds, args.connections)
        replaced = daemon.status()["restarts"].get("unclean", 0) - before
        print(result.line())
        print(f"workers killed and re-forked for leftovers: {replaced} "
              f"({replaced / result.seconds:.0f}/s)")
        _show_failures(daemon)
        results = [
            check(set(result.statuses) == {200}, f"statuses only 200: {result.statuses}"),
            check(not result.errors, f"socket errors: {result.errors or 0}"),
            check(result.rps >= LEFTOVER_TARGET_RPS,
                  f"{result.rps:.0f} req/s >= {LEFTOVER_TARGET_RPS:.0f}"),
        ]
    return 0 if all(results) else 1


def main() -> int:
    cli = parser(__doc__)
    cli.add_argument("scenario", choices=["kill", "leftovers"])
    cli.add_argument("--every", type=float, default=0.1, help="kill: seconds between kills")
    cli.add_argument("--share", type=float, default=0.1, help="leftovers: share of /leak")
    cli.add_argument("--workers-max", type=int, default=0,
                     help="leftovers: workers_max (default: --workers, a fixed pool)")
    args = cli.parse_args()
    if args.scenario == "kill":
        return run_kill(args)
    return run_leftovers(args)


if __name__ == "__main__":
    sys.exit(main())
