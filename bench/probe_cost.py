"""CPU per health probe: the daemon's /readyz and /livez against a `fnd status` exec probe.

    /opt/fnd-venv/bin/python bench/probe_cost.py [--probes 1000]

Each HTTP probe is one request on a fresh connection (as a kubelet's httpGet probe makes it);
the cost is the daemon's CPU (utime + stime from /proc) over the run divided by the count.
`fnd status` is a process: its own CPU (children's rusage) plus the daemon's share, per probe.
Figures go to docs/scaling.md ("Probes").
"""

from __future__ import annotations

import argparse
import http.client
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import fnd_instance, free_port

HELLO = Path(__file__).resolve().parent.parent / "examples" / "hello"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_probes(port: int, path: str, count: int) -> None:
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200, (path, response.status, response.read())
        response.read()
        connection.close()


def status_probes(control: str, count: int) -> None:
    for _ in range(count):
        subprocess.run([sys.executable, "-m", "fnd.cli", "status", "--control", control],
                       stdout=subprocess.DEVNULL, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--status-probes", type=int, default=20)
    args = parser.parse_args()
    admin = free_port()
    with fnd_instance(HELLO, "--metrics-port", str(admin)) as fnd:
        http_probes(admin, "/readyz", 50)  # warm: first connections, code paths
        for path in ("/readyz", "/livez"):
            before, started = cpu_seconds(fnd.pid), time.monotonic()
            http_probes(admin, path, args.probes)
            used, took = cpu_seconds(fnd.pid) - before, time.monotonic() - started
            print(f"{path}: {args.probes} probes, daemon CPU {used:.3f} s = "
                  f"{used / args.probes * 1e6:.0f} us per probe ({took:.1f} s wall)")
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        before, own = cpu_seconds(fnd.pid), children.ru_utime + children.ru_stime
        status_probes(fnd.control, args.status_probes)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = children.ru_utime + children.ru_stime - own + cpu_seconds(fnd.pid) - before
        print(f"fnd status: {args.status_probes} probes, CPU {spent:.3f} s = "
              f"{spent / args.status_probes * 1e3:.0f} ms per probe (process + daemon)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
