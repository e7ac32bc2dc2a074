"""fnd beside its peers, side by side on this machine.

    /opt/fnd-venv/bin/python bench/peers.py [--rounds 2] [--seconds 10]
        [--only NAME]... [--skip NAME]... [--cache DIR | --fresh] [--json FILE]
        [--baseline REV]

Systems (NAME for --only/--skip; a NAME also selects the names that start with NAME-):
  fnd                  fnd serve, production config: strict sandbox (the default as root),
                       JSON logs to a file, --metrics-port, the default pool (2 workers,
                       growing to 4 under load)
  fnd-8                the same with 8 workers (for the memory target)
  fnd-isolated         the default pool with --isolation invocation: a process per
                       request, forked from a warm worker (compare with twilio-run's
                       default fork per request)
  twilio-run           npm twilio-run, default mode (a Node process per request)
  twilio-run-fast      twilio-run --no-fork-process --no-live --no-logs
  functions-framework  Google's functions-framework under its gunicorn app, WORKERS=2
  bare-aiohttp         bench/bare_aiohttp.py: the front-end ceiling (hello-world only)
  fnd-figures          fnd's own figures: worker start, idle worker USS, 504 precision,
                       req/s when every request leaves a thread behind (kill + re-fork)
  baseline, baseline-isolated
                       with --baseline REV: fnd and fnd-isolated as they were at git
                       revision REV of this checkout (exported with git archive and
                       installed into --cache by that revision's scripts/setup-venv), for
                       targets stated against an older fnd "in the same run"

Each round starts every system afresh for each function (hello-world, JSON), warms it with
2 s of wrk at 8 connections, then runs wrk (1 thread) for --seconds at 1 and at 64
connections, and then for 4 s more while a thread samples the PSS of the server's
whole process tree every 0.25 s (not during the timed run: the sampling slows servers made
of many processes).
Rounds alternate the order of the systems. hey cross-checks fnd's hello-world at 64
connections. The table shows mean req/s (and the range over rounds), the median p50/p99
over rounds, the peak PSS (MB = 10^6 bytes) and fnd (default pool) / this system's req/s.

Installs: twilio-run (npm install --prefix) and functions-framework + gunicorn (a venv made
with /usr/bin/python3 -m venv) go to --cache (default /tmp/fnd-peers-cache, reused between
runs); --fresh installs into a temp folder removed at the end. Servers listen on 127.0.0.1
only (twilio-run through bench/peer_projects/loopback.js); every load run is bounded in time;
every server started is stopped at the end, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peers_fnd  # noqa: E402
from bench.common import Load  # noqa: E402
from bench.load import Result, hey  # noqa: E402
from bench.peers_systems import (  # noqa: E402
    DEFAULT_CACHE,
    Installs,
    PeakPss,
    System,
    bare_system,
    baseline_system,
    fnd_system,
    functions_framework_system,
    settle,
    tree,
    twilio_system,
    wrk,
)

MB = 1e6
CONNECTIONS = (1, 64)
PSS_SECONDS = 4  # the extra run per connection count that measures peak PSS
PEERS = ("twilio-run", "twilio-run-fast", "functions-framework")
NAMES = ("fnd", "fnd-8", "fnd-isolated", "twilio-run", "twilio-run-fast", "functions-framework",
         "bare-aiohttp", "fnd-figures", "baseline", "baseline-isolated")


@dataclass
class Sample:
    round: int
    load: Load
    peak_pss: int
    processes: int


def selected(name: str, only: list[str], skip: list[str]) -> bool:
    def hit(names: list[str]) -> bool:
        return any(name == n or name.startswith(n + "-") for n in names)

    return (not only or hit(only)) and not hit(skip)


def build_systems(installs: Installs, args: argparse.Namespace) -> list[System]:
    makers = {
        "fnd": lambda: fnd_system(None, "fnd"),
        "fnd-8": lambda: fnd_system(8, "fnd-8"),
        "fnd-isolated": lambda: fnd_system(None, "fnd-isolated", "--isolation", "invocation"),
        "twilio-run": lambda: twilio_system(installs, fast=False),
        "twilio-run-fast": lambda: twilio_system(installs, fast=True),
        "functions-framework": lambda: functions_framework_system(installs),
        "bare-aiohttp": bare_system,
    }
    if args.baseline:
        makers["baseline"] = lambda: baseline_system(installs, args.baseline, "baseline")
        makers["baseline-isolated"] = lambda: baseline_system(
            installs, args.baseline, "baseline-isolated", "--isolation", "invocation")
    return [make() for name, make in makers.items() if selected(name, args.only, args.skip)]


def run_rounds(systems: list[System], args: argparse.Namespace, workdir: Path
               ) -> tuple[dict[tuple[str, str, int], list[Sample]], list[Result], list[str]]:
    samples: dict[tuple[str, str, int], list[Sample]] = {}
    hey_runs: list[Result] = []
    failures: list[str] = []
    for round_ in range(1, args.rounds + 1):
        order = systems if round_ % 2 else list(reversed(systems))
        for system in order:
            for function in system.functions:
                try:
                    with system.start(function, workdir) as running:
                        url = f"{running.base}/{function}"
                        processes = len(tree(running.pid))
                        wrk(url, 8, 2)  # warm-up: loads the function everywhere
                        for connections in CONNECTIONS:
                            settle(running.pid, processes)
                            load = wrk(url, connections, args.seconds)
                            # PSS comes from a run of its own: reading every process's smaps
                            # 4 times a second cost fnd (6 processes) ~10% of its req/s and
                            # a single-process peer almost nothing.
                            settle(running.pid, processes)
                            with PeakPss(running.pid) as pss:
                                wrk(url, connections, PSS_SECONDS)
                            samples.setdefault((system.key, function, connections), []).append(
                                Sample(round_, load, pss.peak, pss.processes))
                            print(f"round {round_}  {system.label:<48} {function:<5} "
                                  f"c={connections:<3} {_rps(load.rps):>9} req/s  p50 "
                                  f"{load.p50_ms:8.3f}  p99 {load.p99_ms:9.3f} ms  errors "
                                  f"{load.errors:<6} peak PSS {pss.peak / MB:7.1f} MB "
                                  f"({pss.processes} processes)", flush=True)
                        if system.key == "fnd" and function == "hello":
                            settle(running.pid, processes)
                            result = hey(url, args.seconds, 64)
                            hey_runs.append(result)
                            print(f"round {round_}  hey cross-check, fnd hello c=64: "
                                  f"{result.line()}", flush=True)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    text = f"round {round_}: {system.label} / {function}: {exc}"
                    failures.append(text)
                    print("FAILED " + text, flush=True)
    return samples, hey_runs, failures


@dataclass
class Row:
    rps: float
    rps_min: float
    rps_max: float
    p50: float
    p99: float
    peak_pss: int
    errors: int


def _median(values: list[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return statistics.median(known) if known else math.nan


def aggregate(samples: list[Sample]) -> Row:
    rps = [s.load.rps for s in samples]
    return Row(statistics.mean(rps), min(rps), max(rps),
               _median([s.load.p50_ms for s in samples]),
               _median([s.load.p99_ms for s in samples]),
               max(s.peak_pss for s in samples), sum(s.load.errors for s in samples))


def _rps(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def table(systems: list[System], rows: dict[tuple[str, str, int], Row]) -> list[str]:
    lines = [f"{'system':<48} {'fn':<5} {'conn':>4} {'req/s':>8} {'range':>13} "
             f"{'p50 ms':>8} {'p99 ms':>9} {'PSS MB':>7} {'errors':>6} {'fnd/x':>7}"]
    for system in systems:
        for function in system.functions:
            for connections in CONNECTIONS:
                row = rows.get((system.key, function, connections))
                if row is None:
                    continue
                base = rows.get(("fnd", function, connections))
                ratio = f"{base.rps / row.rps:.2f}" if base and row.rps else "-"
                spread = f"{_rps(row.rps_min)}-{_rps(row.rps_max)}"
                lines.append(
                    f"{system.label:<48} {function:<5} {connections:>4} {_rps(row.rps):>8} "
                    f"{spread:>13} {row.p50:>8.3f} {row.p99:>9.3f} {row.peak_pss / MB:>7.1f} "
                    f"{row.errors:>6} {ratio:>7}")
    return lines


def _verdicts_into(lines: list[str]) -> Callable[[bool | None, str], None]:
    """``line(ok, text)`` appends a PASS, FAIL or n/a (None: not measured) line to `lines`."""
    def line(ok: bool | None, text: str) -> None:
        lines.append(f"{'n/a ' if ok is None else 'PASS' if ok else 'FAIL'}  {text}")
    return line


def targets(rows: dict[tuple[str, str, int], Row], figures: peers_fnd.Figures | None
            ) -> list[str]:
    lines: list[str] = []
    line = _verdicts_into(lines)

    fnd64, fnd1 = rows.get(("fnd", "hello", 64)), rows.get(("fnd", "hello", 1))
    peers = [(key, rows[(key, "hello", 64)]) for key in PEERS if (key, "hello", 64) in rows]
    if fnd64 and peers:
        key, best = max(peers, key=lambda item: item[1].rps)
        line(fnd64.rps >= 2 * best.rps,
             f"hello-world at 64 connections >= 2x the fastest peer: fnd {fnd64.rps:.0f} req/s "
             f"vs {key} {best.rps:.0f} req/s = {fnd64.rps / best.rps:.2f}x")
    else:
        line(None, "hello-world at 64 connections >= 2x the fastest peer (fnd or peers not run)")
    if fnd1:
        line(fnd1.p50 <= 0.25, f"p50 at 1 connection <= 0.25 ms: {fnd1.p50:.3f} ms")
    else:
        line(None, "p50 at 1 connection <= 0.25 ms (fnd not run)")
    if fnd64:
        line(fnd64.p99 <= 10, f"p99 at 64 connections <= 10 ms: {fnd64.p99:.3f} ms")
    else:
        line(None, "p99 at 64 connections <= 10 ms (fnd not run)")
    reforks = [r for r in figures.reforks if r.workers == 2] if figures else []
    if reforks:
        rps = reforks[0].ok_rps
        others = ", ".join(f"{r.workers} workers {r.ok_rps:.0f}" for r in figures.reforks
                           if r.workers != 2) if figures else ""
        line(rps >= 1200, f"kill + re-fork path >= 1,200 req/s: {rps:.0f} req/s answered 200 "
             "with 2 workers" + (f" ({others})" if others else ""))
    else:
        line(None, "kill + re-fork path >= 1,200 req/s (fnd-figures not run)")
    eight = [row for (key, _, _), row in rows.items() if key == "fnd-8"]
    if eight:
        peak = max(row.peak_pss for row in eight)
        line(peak <= 100 * MB, f"whole server PSS with 8 workers <= 100 MB: peak "
             f"{peak / MB:.1f} MB under load")
    else:
        line(None, "whole server PSS with 8 workers <= 100 MB (fnd-8 not run)")
    # Each at its best connection count (twilio-run's fork per request may time out at 64).
    isolated = max((rows[k].rps for k in rows if k[0] == "fnd-isolated" and k[1] == "hello"),
                   default=None)
    forking = max((rows[k].rps for k in rows if k[0] == "twilio-run" and k[1] == "hello"),
                  default=None)
    if isolated is not None and forking is not None:
        ratio = f"{isolated / forking:.0f}x" if forking else "twilio-run answered nothing"
        line(isolated >= 50 * forking,
             f"isolation = invocation >= 50x twilio-run's fork per request: fnd "
             f"{isolated:.0f} req/s vs {forking:.1f} req/s = {ratio}")
    else:
        line(None, "isolation = invocation >= 50x twilio-run's default (fnd-isolated or "
                   "twilio-run not run)")
    lines += speed_targets(rows)
    if figures and figures.overshoot_ms:
        worst = max(figures.overshoot_ms)
        all504 = all(code == 504 for code in figures.spin_statuses)
        line(worst <= 100 and all504, f"504 within limit + 100 ms: worst {worst:.1f} ms over "
             f"the 1 s limit, statuses {sorted(set(figures.spin_statuses))}")
    else:
        line(None, "504 within limit + 100 ms (fnd-figures not run)")
    return lines


def speed_targets(rows: dict[tuple[str, str, int], Row]) -> list[str]:
    """Issue #25's "done when", each from this run's rows only."""
    lines: list[str] = []
    line = _verdicts_into(lines)

    for connections, factor in ((1, 1.2), (64, 1.5)):
        for function in ("hello", "json"):
            ours = rows.get(("fnd", function, connections))
            peer = rows.get(("twilio-run-fast", function, connections))
            text = (f"{function}, {connections} connection(s): fnd >= {factor}x twilio-run "
                    "--no-fork-process")
            if ours and peer and peer.rps:
                line(ours.rps >= factor * peer.rps, f"{text}: {ours.rps:.0f} vs "
                     f"{peer.rps:.0f} req/s = {ours.rps / peer.rps:.2f}x")
            else:
                line(None, f"{text} (fnd or twilio-run-fast not run)")
    ours, bare = rows.get(("fnd", "hello", 1)), rows.get(("bare-aiohttp", "hello", 1))
    if ours and bare:
        line(ours.p50 <= bare.p50 + 0.15, f"p50 at 1 connection <= bare aiohttp's + 0.15 ms: "
             f"{ours.p50:.3f} vs {bare.p50:.3f} ms (+{ours.p50 - bare.p50:.3f})")
    else:
        line(None, "p50 at 1 connection <= bare aiohttp's + 0.15 ms (fnd or bare-aiohttp not "
                   "run)")
    isolated = max((rows[k].rps for k in rows if k[0] == "fnd-isolated" and k[1] == "hello"),
                   default=None)
    before = rows.get(("baseline-isolated", "hello", 64))
    ours64 = rows.get(("fnd-isolated", "hello", 64))
    if ours64 and before and before.rps:
        line(ours64.rps >= 5 * before.rps, f"isolation = invocation, hello, 64 connections, >= "
             f"5x the baseline's in this run: {ours64.rps:.0f} vs {before.rps:.0f} req/s = "
             f"{ours64.rps / before.rps:.2f}x")
    else:
        line(None, "isolation = invocation >= 5x the baseline's (--baseline REV, fnd-isolated "
                   "and baseline-isolated)")
    forking = max((rows[k].rps for k in rows if k[0] == "twilio-run" and k[1] == "hello"),
                  default=None)
    if isolated is not None and forking:
        line(isolated >= 250 * forking, f"isolation = invocation >= 250x twilio-run's fork "
             f"mode: {isolated:.0f} vs {forking:.1f} req/s = {isolated / forking:.0f}x")
    else:
        line(None, "isolation = invocation >= 250x twilio-run's fork mode (fnd-isolated or "
                   "twilio-run not run, or twilio-run answered nothing)")
    return lines


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every `with`, which stops its servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument("--skip", action="append", default=[], metavar="NAME")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="install folder reused between runs (default %(default)s)")
    parser.add_argument("--fresh", action="store_true",
                        help="install into a temp folder removed at the end")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run fnd as it was at this git revision (baseline, "
                             "baseline-isolated)")
    args = parser.parse_args()
    for name in args.only + args.skip:
        if not any(n == name or n.startswith(name + "-") for n in NAMES):
            parser.error(f"unknown system {name!r}; one of {', '.join(NAMES)}")
    if not args.baseline and any(n.startswith("baseline") for n in args.only):
        parser.error("baseline and baseline-isolated need --baseline REV")
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too when started ignoring it (&)
        signal.signal(signum, _terminate)
    installs = Installs(None if args.fresh else args.cache)
    workdir = Path(tempfile.mkdtemp(prefix="fnd-peers-", dir="/tmp"))
    began = time.monotonic()
    try:
        systems = build_systems(installs, args)
        for system in systems:
            print(f"{system.label}: {system.version}", flush=True)
        samples, hey_runs, failures = run_rounds(systems, args, workdir)
        figures = None
        if selected("fnd-figures", args.only, args.skip):
            figures = peers_fnd.measure(workdir, args.seconds)
        rows = {key: aggregate(found) for key, found in samples.items()}
        out = ["", f"{args.rounds} round(s), {args.seconds} s per run, wrk -t1 on the same 2 "
                   f"cores; {time.monotonic() - began:.0f} s in all", *table(systems, rows)]
        for result in hey_runs:
            out.append(f"hey cross-check, fnd hello-world, 64 connections: {result.line()}")
        if figures is not None:
            out += ["", *peers_fnd.report(figures)]
        out += ["", "Targets", *targets(rows, figures)]
        out += [f"FAILED {text}" for text in failures]
        print("\n".join(out), flush=True)
        if args.json:
            args.json.write_text(json.dumps(
                {"samples": {"/".join(map(str, k)): [asdict(s) for s in v]
                             for k, v in samples.items()},
                 "hey": [asdict(r) for r in hey_runs],
                 "figures": asdict(figures) if figures else None,
                 "versions": {s.key: s.version for s in systems}}, indent=2))
    except KeyboardInterrupt:
        print("interrupted: stopping what was started", file=sys.stderr)
        sys.exit(130)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir, ignore_errors=True)
        installs.cleanup()


if __name__ == "__main__":
    main()
