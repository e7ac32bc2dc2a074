"""Every setting of `fnd serve`, declared once.

One `Setting` per setting gives its name (the `fnd.toml` key), its `FND_*` variable, its
`fnd serve` flag if it has one, its type, default and one-line help. The config loader's type
tables, the `fnd serve` flags and the README's settings table are all derived from `SETTINGS`,
so adding a setting here (and its field in `fnd.daemon.config.Config`, which a test keeps in step)
is the whole job. `python -m fnd.daemon.settings_table --readme` rewrites the README's table.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MIB = 1024 * 1024

README_START = "<!-- settings:start -->"
README_END = "<!-- settings:end -->"


@dataclass(frozen=True)
class Setting:
    """One setting; `kind` is int, float, bool, str or tuple (a list of strings)."""

    name: str
    kind: type
    default: Any
    help: str
    optional: bool = False  # None is a value: "not set"
    flag: bool = False  # `fnd serve --name-with-dashes`
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    exclusive: bool = False  # among the flags of which at most one may be given (where to listen)
    unit: str = ""  # shown after the default in the README
    shown: str | None = None  # the README's default, where the value alone says too little

    @property
    def variable(self) -> str:
        return "FND_" + self.name.upper()

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-")

    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        value = self.default
        if value is None:
            return "–"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
        text = f"{value:g}" if isinstance(value, float) else str(value)
        return f"{text} {self.unit}" if self.unit else text


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "127.0.0.1", "address to bind", flag=True),
    Setting("port", int, 3000, "TCP port to listen on; 0 picks a free one",
            flag=True, exclusive=True),
    Setting("unix", str, None, "listen on this unix socket instead of TCP", optional=True,
            flag=True, metavar="PATH", exclusive=True),
    Setting("control", str, None, "the 0600 control socket of `fnd status` / `fnd reload`",
            optional=True, flag=True, metavar="PATH",
            shown="`$RUNTIME_DIRECTORY/control.sock`, else `/run/fnd/control.sock` (root) or "
                  "`/tmp/fnd-$UID/control.sock`"),
    Setting("metrics_port", int, None,
            "also serve Prometheus metrics on 127.0.0.1:PORT/metrics", optional=True,
            flag=True, metavar="PORT"),
    Setting("workers_min", int, 2, "warm workers kept at all times", flag=True),
    Setting("workers_max", int, 4, "most workers under load", flag=True),
    Setting("queue_max", int, 1024,
            "calls waiting beyond the pool (FIFO) at most; one more gets 503 with `Retry-After`"),
    Setting("queue_timeout", float, 10.0,
            "longest wait in that queue; beyond it 503 with `Retry-After`", unit="s"),
    Setting("timeout", float, 5.0, "time limit per invocation; 504 at the limit",
            flag=True, unit="s"),
    Setting("idle_timeout", float, 60.0,
            "idle workers above `workers_min` retire after this long", unit="s"),
    Setting("drain_timeout", float, 30.0,
            "on SIGTERM, calls in flight may finish for this long", unit="s"),
    Setting("header_timeout", float, 10.0,
            "a request head must be complete this long after its first byte (or the "
            "connection's start); else 408 and the connection is closed",
            flag=True, metavar="SECONDS", unit="s"),
    Setting("keepalive_timeout", float, 15.0,
            "close a connection idle this long between requests: no request, no byte of "
            "the next one", flag=True, metavar="SECONDS", unit="s"),
    Setting("body_timeout", float, 60.0,
            "a request body must be complete this long after its head (in total, however it "
            "trickles); else 408 and the connection is closed", unit="s"),
    Setting("send_timeout", float, 60.0,
            "a client that takes nothing of a large answer for this long is cut off and the "
            "answer's buffers freed", unit="s"),
    Setting("max_connections", int, 1000,
            "client connections at most; one more gets a minimal 503 and is closed at once "
            "(worst case with the defaults: 1000 x 64 KiB of small answers in transports)"),
    Setting("max_buffered_mb", int, 64,
            "answers over 64 KiB held for clients, across all connections, at most; one more "
            "gets 503 with `Retry-After` (at most 64 MB of buffered answers)", unit="MB"),
    Setting("max_requests", int, 10000, "recycle a worker after this many calls; 0: never"),
    Setting("max_requests_jitter", int, 1000,
            "up to this many calls added at random to `max_requests` per worker, so that "
            "workers do not all recycle together"),
    Setting("max_worker_age", float, 3600.0, "recycle a worker older than this; 0: never",
            unit="s"),
    Setting("isolation", str, "worker",
            "`invocation`: a fresh worker for every call, killed after it (also per function)",
            flag=True, choices=("worker", "invocation")),
    Setting("allow_broken", bool, False,
            "serve the functions that load even when others cannot (always on with --dev); "
            "otherwise each problem is printed and nothing starts or reloads", flag=True),
    Setting("max_rss_mb", int, 0,
            "recycle a worker whose RSS after a call is above this many MiB; 0: never",
            shown="0 (off)"),
    Setting("dev", bool, False,
            "development mode: reload on edits, console logs, tracebacks in 500 bodies",
            flag=True),
    Setting("strict", bool, False, "refuse to start if any function or asset has a problem",
            flag=True),
    Setting("no_signatures", bool, False,
            "with --dev: skip X-Twilio-Signature checks (warns per request)", flag=True),
    Setting("log_format", str, None,
            "`json` or `console`; unset: console in a terminal or with --dev, else json",
            optional=True, flag=True, choices=("json", "console")),
    Setting("max_request_body", int, 1 * _MIB,
            "largest request body accepted, bytes (413 beyond); a value one 8 MiB worker frame "
            "cannot carry (about 3.4 MiB) is refused at start",
            flag=True, metavar="BYTES", shown="1 MiB"),
    Setting("max_response_body", int, 4 * _MIB,
            "largest response body a function may send, bytes (500 beyond); at most about "
            "7.9 MiB", flag=True, metavar="BYTES", shown="4 MiB"),
    Setting("max_header_bytes", int, 15 * 1024,
            "largest head of a request (431 beyond) or of a response (500 beyond), bytes"),
    Setting("max_header_count", int, 90,
            "most header fields of a request (431 beyond) or of a response (500 beyond)"),
    Setting("cors", bool, True, "fnd answers `OPTIONS` itself (204 and CORS headers)"),
    Setting("cookie_secure", bool, True,
            "cookies a function sets get `HttpOnly` and `Secure` unless they say otherwise"),
    Setting("public_url", str, None,
            "URL used to check signatures; its host is `context.DOMAIN_NAME`", optional=True),
    Setting("twilio_api_base_url", str, None,
            "send `getTwilioClient()` requests to a compatible server instead of Twilio",
            optional=True),
    Setting("trusted_proxies", tuple, ("unix",),
            "peers whose `X-Forwarded-*` headers are believed (comma-separated in the "
            "environment)"),
    Setting("sandbox", str, "strict",
            "`permissive` starts even when a protection cannot be applied (with a warning)"),
    Setting("memory_mb", int, 256, "memory limit of each worker", unit="MiB"),
    Setting("scratch_mb", int, 64,
            "size of each worker's scratch folder (its own tmpfs; a write beyond it fails with "
            "`ENOSPC`); 0: no limit", unit="MiB"),
    Setting("max_output", int, 1 * _MIB,
            "function output logged per invocation, bytes; the rest is dropped with one "
            "warning; 0: no limit", shown="1 MiB"),
    Setting("network", bool, True, "workers may reach the network"),
    Setting("uid_base", int, None,
            "the first worker's uid; unset: the first range no other fnd on the host holds "
            "(docs/sandbox.md#worker-uids)", optional=True, shown="auto, from 61000"),
)

BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


def names(kind: type, *, optional: bool) -> frozenset[str]:
    """The names of the settings parsed as `kind`, with or without None as a value."""
    return frozenset(s.name for s in SETTINGS if s.kind is kind and s.optional is optional)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add a `--flag` to `parser` for each setting that has one; unset flags parse as None."""
    exclusive = parser.add_mutually_exclusive_group()
    for setting in SETTINGS:
        if not setting.flag:
            continue
        target = exclusive if setting.exclusive else parser
        help_text = setting.help.replace("`", "").replace("%", "%%")
        if setting.kind is not bool and setting.default is not None:
            help_text += f" (default {setting.shown_default().replace('`', '')})"
        if setting.kind is bool:
            target.add_argument(setting.flag_name, action="store_true", default=None,
                                help=help_text)
        else:
            target.add_argument(setting.flag_name, type=setting.kind, metavar=setting.metavar,
                                choices=setting.choices or None, help=help_text)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The flag settings parsed by `add_flags`, by name (None: not given)."""
    return {s.name: getattr(args, s.name) for s in SETTINGS if s.flag}


def markdown_table() -> str:
    """The README's settings table."""
    lines = ["| setting (`fnd.toml`) | environment | flag | default | meaning |",
             "|---|---|---|---|---|"]
    for s in SETTINGS:
        flag = f"`{s.flag_name}`" if s.flag else "–"
        lines.append(f"| `{s.name}` | `{s.variable}` | {flag} | {s.shown_default()} | {s.help} |")
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> tuple[int, int]:
    """Where the settings table lies in the README's `text`: between the two marker lines."""
    start = text.index(README_START) + len(README_START) + 1
    return start, text.index(README_END, start)


def rewrite_readme(path: Path) -> bool:
    """Put the declared table into the README at `path`; True if it changed."""
    text = path.read_text(encoding="utf-8")
    start, end = readme_block(text)
    updated = text[:start] + markdown_table() + text[end:]
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fnd.daemon.settings_table",
                                     description="Print or write the README's settings table.")
    parser.add_argument("--readme", nargs="?", const="README.md", metavar="PATH",
                        help="rewrite the table in this README (default: README.md)")
    args = parser.parse_args(argv)
    if args.readme is None:
        sys.stdout.write(markdown_table())
        return 0
    changed = rewrite_readme(Path(args.readme))
    print(f"{args.readme}: {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
