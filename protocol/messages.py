"""Message types carried in frames. Every message is a map with a ``t`` field.

zygote channel (daemon <-> zygote, a unix socketpair; worker fds travel as SCM_RIGHTS):
  daemon -> zygote  {"t": CONFIGURE, "config": WorkerConfig}  (first frame, and on reload)
  zygote -> daemon  {"t": ZYGOTE_READY, "pid": int}   (after the first CONFIGURE)
  daemon -> zygote  {"t": SPAWN, "slot": int}  + fds [cmd_r, res_w, out_w] on the same sendmsg
  zygote -> daemon  {"t": SPAWNED, "slot": int, "pid": int}
                    {"t": EXITED, "pid": int, "status": int}   (raw wait status)
                    {"t": SPAWN_FAILED, "slot": int, "reason": str}

worker channel (two pipes; the worker's stdout/stderr is a third pipe, plain text):
  worker -> daemon  {"t": READY, "pid": int, "layers": {name: str}}
                    {"t": FAILED, "reason": str}   (could not sandbox or start; it exits)
  daemon -> worker  {"t": INVOKE, "id": str, "function": FunctionRef, "event": dict,
                     "context": dict, "timeout": float}
  worker -> daemon  {"t": RESULT, "id": str, "status": int, "headers": [[name, value], ...],
                     "body": bytes, "clean": bool, "error": str | None}
                    {"t": LOG, "id": str, "stream": "stdout"|"stderr"|"logging"|"fnd",
                     "level": str, "line": str}   ("fnd": the worker's own note, e.g.
                     that the invocation's output was truncated)
                    {"t": DONE, "id": str, "clean": bool, "reason": str | None,
                     "cpu": float, "rss": int}
  daemon -> worker  {"t": PREFLIGHT, "functions": [[route, file, needs_handler], ...],
                     "context": dict}   (the project's variables, for bootstraps that read them)
  worker -> daemon  {"t": PREFLIGHT_RESULT, "problems": [[route, reason], ...]}
                    (a worker that got PREFLIGHT serves nothing else: the daemon kills it)
"""

from __future__ import annotations

from typing import Any, TypedDict

CONFIGURE = "configure"
ZYGOTE_READY = "zygote_ready"
SPAWN = "spawn"
SPAWNED = "spawned"
SPAWN_FAILED = "spawn_failed"
EXITED = "exited"

READY = "ready"
FAILED = "failed"
INVOKE = "invoke"
RESULT = "result"
LOG = "log"
DONE = "done"
PREFLIGHT = "preflight"
PREFLIGHT_RESULT = "preflight_result"
LOG_STREAMS = frozenset({"stdout", "stderr", "logging", "fnd"})  # a LOG frame's "stream"


class FunctionRef(TypedDict):
    name: str  # the route, e.g. "/sms/reply"
    file: str  # absolute path of the .py file


class WorkerConfig(TypedDict, total=False):
    """Non-secret settings a worker needs from birth; passed through the zygote."""

    project_dir: str
    deps_dir: str  # the project's installed requirements (.fnd/deps/<hash>); "" when none
    functions: dict[str, str]  # function name -> absolute file, private ones included
    sources: dict[str, bytes]  # absolute file -> its code as the daemon read it (immutable)
    assets: dict[str, str]  # private asset path -> absolute file
    dev: bool
    max_body: int  # response body limit in bytes
    max_header_bytes: int
    max_header_count: int
    cookie_secure_default: bool
    twilio_api_base_url: str | None
    max_output: int  # function output per invocation in bytes, then one warning; 0: no cap
    sandbox: dict[str, Any]  # protocol.sandbox_settings, as a dict


Message = dict[str, Any]


# What one line of output counts against max_output at least: an empty line still costs the
# daemon a log entry, so a loop of print() cannot flood the log one byte at a time.
LINE_COST_MIN = 100


def line_cost(line: str) -> int:
    """The bytes a line of function output counts against max_output (worker and daemon
    count alike): its UTF-8 length plus the newline, at least LINE_COST_MIN."""
    size = len(line) if line.isascii() else len(line.encode("utf-8", "replace"))
    return max(size + 1, LINE_COST_MIN)


def describe_limit(limit: int) -> str:
    """1048576 -> "1 MiB"; sizes that are not whole MiB in bytes."""
    mib = 1024 * 1024
    return f"{limit // mib} MiB" if limit % mib == 0 else f"{limit} bytes"
