"""Helpers shared by soak.py and chaos.py: hey and wrk runs with status counts, the daemon's
process, control socket and log (found from the `fnd_server` port), timestamps."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from fnd.ctl.client import request as control_request


@dataclass
class Result:
    seconds: float
    rps: float
    statuses: dict[int, int]
    errors: dict[str, int] = field(default_factory=dict)  # socket errors, timeouts
    p50_ms: float = 0.0
    p99_ms: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def line(self) -> str:
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        errors = sum(self.errors.values())
        return (f"{self.total} responses in {self.seconds:.1f} s ({self.rps:.0f} req/s), "
                f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms; status {{{statuses}}}; "
                f"socket errors {errors}")


def hey(url: str, seconds: int, connections: int, rate: float | None = None) -> Result:
    """One hey run, bounded by `seconds`; `rate` limits each connection (queries/s)."""
    command = ["hey", "-z", f"{seconds}s", "-c", str(connections), "-t", "30"]
    if rate:
        command += ["-q", str(rate)]
    out = subprocess.run(command + [url], check=True, capture_output=True, text=True,
                         timeout=seconds + 90).stdout
    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors: dict[str, int] = {}
    if "Error distribution:" in out:
        for n, text in re.findall(r"\[(\d+)\]\s+(.+)", out.split("Error distribution:")[1]):
            errors[text.strip()] = int(n)
    return Result(
        seconds=float(_find(r"Total:\s+([\d.]+) secs", out)),
        rps=float(_find(r"Requests/sec:\s+([\d.]+)", out)),
        statuses=statuses, errors=errors,
        p50_ms=float(_find(r"50% in ([\d.]+) secs", out, "0")) * 1000,
        p99_ms=float(_find(r"99% in ([\d.]+) secs", out, "0")) * 1000,
    )


# wrk with a path mix and per-status counts (wrk itself only counts "non-2xx").
_MIX_SCRIPT = """
local counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  share = tonumber(args[1])
  rare = args[2]
  common = args[3]
end
function request()
  if math.random() < share then return wrk.format(nil, rare) end
  return wrk.format(nil, common)
end
function response(status, headers, body)
  local key = "s" .. status
  counts[key] = (counts[key] or 0) + 1
  _G[key] = counts[key]
end
function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for code = 100, 599 do
      local n = thread:get("s" .. code)
      if n then totals[code] = (totals[code] or 0) + n end
    end
  end
  for code, n in pairs(totals) do io.write(string.format("STATUS %d %d\\n", code, n)) end
end
"""


def wrk_mix(base: str, rare: str, common: str, share: float, seconds: int, connections: int,
            threads: int = 2) -> Result:
    """wrk at `connections`, sending `rare` for `share` of the requests and `common` else."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_MIX_SCRIPT)
        script.flush()
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
             "-s", script.name, base, "--", str(share), rare, common],
            check=True, capture_output=True, text=True, timeout=seconds + 90,
        ).stdout
    statuses = {int(code): int(n) for code, n in re.findall(r"STATUS (\d+) (\d+)", out)}
    errors = {kind: int(n) for kind, n in
              re.findall(r"(connect|read|write|timeout) (\d+)", out) if int(n)}
    return Result(seconds=float(seconds), rps=float(_find(r"Requests/sec:\s+([\d.]+)", out)),
                  statuses=statuses, errors=errors,
                  p50_ms=_wrk_ms(_find(r"50%\s+(\S+)", out)),
                  p99_ms=_wrk_ms(_find(r"99%\s+(\S+)", out)))


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        return 0.0
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


def _find(pattern: str, text: str, default: str | None = None) -> str:
    match = re.search(pattern, text)
    if match is None:
        if default is not None:
            return default
        raise RuntimeError(f"{pattern!r} not found in:\n{text}")
    return match.group(1)


@dataclass
class Daemon:
    """The `fnd serve` that bench.common.fnd_server started on `port`."""

    process: psutil.Process
    control: str
    log: Path

    @classmethod
    def on_port(cls, port: int) -> Daemon:
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            if "fnd.cli" in cmdline and str(port) in cmdline:
                control = cmdline[cmdline.index("--control") + 1]
                return cls(process, control, Path(control).parent / "fnd.log")
        raise RuntimeError(f"no fnd serve on port {port}")

    def rss_mb(self) -> float:
        return float(self.process.memory_info().rss) / 2**20

    def status(self) -> dict[str, Any]:
        return asyncio.run(control_request(self.control, {"cmd": "status"}))

    def lines(self, event: str | None = None) -> list[dict[str, Any]]:
        found = []
        for raw in self.log.read_text(errors="replace").splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict) and (event is None or line.get("event") == event):
                found.append(line)
        return found


def epoch(timestamp: str) -> float:
    """A log line's ISO-8601 UTC timestamp as seconds since the epoch."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def percentiles(values: list[float], points: tuple[int, ...] = (50, 90, 99, 100)) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    parts = []
    for point in points:
        index = min(len(ordered) - 1, max(0, round(point / 100 * len(ordered)) - 1))
        parts.append(f"p{point} {ordered[index]:.1f}")
    return ", ".join(parts)
