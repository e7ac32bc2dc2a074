"""Hello-world throughput: fnd against a bare aiohttp server started by this same script.

    python bench/hello.py [--seconds 10]

Prints req/s, p50 and p99 at 1 and 64 connections for both, and fnd's ratio to bare aiohttp.
Loopback only; every run is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH, Load, bare_server, fnd_server, print_table, wrk  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fnd-arg", action="append", default=[],
                        help="extra argument for fnd serve (repeatable)")
    args = parser.parse_args()
    results: dict[tuple[str, int], Load] = {}
    with bare_server() as port:
        wrk(f"http://127.0.0.1:{port}/", 8, 2)  # warm-up
        for connections in (1, 64):
            results[("bare aiohttp", connections)] = wrk(
                f"http://127.0.0.1:{port}/", connections, args.seconds)
    fnd_args = ["--workers-min", str(args.workers), "--workers-max", str(args.workers),
                *args.fnd_arg]
    with fnd_server(BENCH / "projects" / "hello", *fnd_args) as port:
        wrk(f"http://127.0.0.1:{port}/hello", 8, 2)
        for connections in (1, 64):
            results[("fnd", connections)] = wrk(
                f"http://127.0.0.1:{port}/hello", connections, args.seconds)
    for connections in (1, 64):
        print(f"\n{connections} connection(s), {args.seconds} s each")
        base = results[("bare aiohttp", connections)]
        print_table([("bare aiohttp", base), ("fnd", results[("fnd", connections)])], base)


if __name__ == "__main__":
    main()
