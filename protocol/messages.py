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
                     "context": dict, "timeout": float, "trace": TraceHeaders}
  worker -> daemon  {"t": RESULT, "id": str, "status": int, "headers": [[name, value], ...],
                     "body": bytes, "clean": bool, "error": str | None}
                    {"t": LOG, "id": str, "stream": "stdout"|"stderr"|"logging"|"fnd",
                     "level": str, "line": str}   ("fnd": the worker's own note, e.g.
                     that the invocation's output was truncated)
                    {"t": RETURNED, "id": str}   (dev mode only: a callback-style handler
                     returned without calling callback; the call stays open)
                    {"t": DONE, "id": str, "clean": bool, "reason": str | None,
                     "cpu": float, "rss": int}   (always after the call's one RESULT: a
                     DONE before it is forged, and the daemon kills that worker)
  daemon -> worker  {"t": PREFLIGHT, "functions": [FunctionCheck, ...],
                     "context": dict}   (the project's variables, for bootstraps that read them)
  worker -> daemon  {"t": PREFLIGHT_RESULT, "problems": [[route, reason], ...]}
                    (a worker that got PREFLIGHT serves nothing else: the daemon kills it)

  isolation = "invocation" (worker/fork.py, daemon/pool/fork_worker.py):
  daemon -> worker  {"t": FORK, "function": FunctionRef, "context": dict}   (no request data:
                     the function to load and the project's variables; the worker forks)
  child  -> daemon  {"t": FORKED, "pid": int}   (before any function code; the daemon then
                     sends the INVOKE, which only the child reads, then RESULT ... DONE)
  worker -> daemon  {"t": REAPED, "pid": int, "status": int, "left": bool}   (the child is
                     gone; ``left``: a process it started still runs)
  daemon -> child   {"t": UNFORK}   (instead of an INVOKE: the child exits unused, so that
                     the worker reads the command pipe again)
  The daemon sends the next FORK as soon as a call's slot is checked, so that the next
  isolated call finds its child already waiting (daemon/pool/fork_worker.py).
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypedDict

from fnd.protocol.sandbox_config import SandboxConfig

CONFIGURE: Final = "configure"
ZYGOTE_READY: Final = "zygote_ready"
SPAWN: Final = "spawn"
SPAWNED: Final = "spawned"
SPAWN_FAILED: Final = "spawn_failed"
EXITED: Final = "exited"

READY: Final = "ready"
FAILED: Final = "failed"
INVOKE: Final = "invoke"
RESULT: Final = "result"
LOG: Final = "log"
DONE: Final = "done"
RETURNED: Final = "returned"
PREFLIGHT: Final = "preflight"
PREFLIGHT_RESULT: Final = "preflight_result"
FORK: Final = "fork"
FORKED: Final = "forked"
REAPED: Final = "reaped"
UNFORK: Final = "unfork"
LOG_STREAMS = frozenset({"stdout", "stderr", "logging", "fnd"})  # a LOG frame's "stream"


class FunctionRef(TypedDict):
    name: str  # the route, e.g. "/sms/reply"
    file: str  # absolute path of the .py file


class WorkerSettings(TypedDict, total=False):
    """The daemon's settings every worker applies, named and typed as the fields of
    ``fnd.daemon.config.Config`` that declare ``worker=True`` (a test keeps them equal)."""

    dev: bool
    max_response_body: int
    max_header_bytes: int
    max_header_count: int
    cookie_secure: bool
    twilio_api_base_url: str | None
    max_output: int


class WorkerConfig(WorkerSettings, total=False):
    """Non-secret settings a worker needs from birth; passed through the zygote."""

    project_dir: str
    deps_dir: str  # the project's installed requirements (.fnd/deps/<hash>); "" when none
    functions: dict[str, str]  # function name -> absolute file, private ones included
    sources: dict[str, bytes]  # absolute file -> its code as the daemon read it (immutable)
    assets: dict[str, str]  # private asset path -> absolute file
    sandbox: SandboxConfig


# -- the frames, one declaration each (the table above in types) ------------------------
# Senders build them as literals annotated with these types, so mypy checks every field at
# no run-time cost (a TypedDict is a plain dict). A received frame is a Message until it is
# checked: the daemon checks a worker's frames in daemon/pool/frame_check.py (untrusted), the
# worker checks INVOKE in worker/loop.py.

class Configure(TypedDict):
    t: Literal["configure"]
    config: WorkerConfig


class ZygoteReady(TypedDict):
    t: Literal["zygote_ready"]
    pid: int


class Spawn(TypedDict):
    t: Literal["spawn"]
    slot: int


class Spawned(TypedDict):
    t: Literal["spawned"]
    slot: int
    pid: int


class SpawnFailed(TypedDict):
    t: Literal["spawn_failed"]
    slot: int
    reason: str


class Exited(TypedDict):
    t: Literal["exited"]
    pid: int
    status: int  # the raw wait status


class Ready(TypedDict):
    t: Literal["ready"]
    pid: int
    layers: dict[str, str]  # sandbox layer -> what it did


class Failed(TypedDict):
    t: Literal["failed"]
    reason: str


class TraceHeaders(TypedDict):
    """W3C Trace Context of an invocation (protocol/trace.py): fnd's span, as the function
    gets it (``context.traceparent``) and its Twilio client passes on (as a child)."""
    traceparent: str  # "00-<trace id>-<fnd's span id>-<flags>", checked by the daemon
    tracestate: str  # the caller's, checked; "" when none


class Invoke(TypedDict):
    t: Literal["invoke"]
    id: str
    function: FunctionRef
    event: dict[str, Any]
    context: dict[str, Any]
    timeout: float
    trace: TraceHeaders


class Result(TypedDict):
    t: Literal["result"]
    id: str
    status: int
    headers: list[tuple[str, str]]  # on the wire [name, value] arrays; checked: tuples again
    body: bytes
    clean: bool
    error: str | None


class Log(TypedDict):
    t: Literal["log"]
    id: str | None  # None: output between invocations
    stream: str  # one of LOG_STREAMS
    level: str | None
    line: str


class Returned(TypedDict):
    t: Literal["returned"]
    id: str


class Done(TypedDict):
    t: Literal["done"]
    id: str
    clean: bool
    reason: str | None
    cpu: float  # CPU seconds of the invocation
    rss: int  # peak RSS in bytes


class FunctionCheck(TypedDict):
    """One function a PREFLIGHT loads to see whether it can run."""
    route: str  # e.g. "/sms/reply"
    file: str  # absolute path of the .py file
    needs_handler: bool  # public and protected functions; a private module only imports


class Preflight(TypedDict):
    t: Literal["preflight"]
    functions: list[FunctionCheck]
    context: dict[str, Any]


class PreflightResult(TypedDict):
    t: Literal["preflight_result"]
    problems: list[list[str]]  # [route, reason]


class Fork(TypedDict):
    t: Literal["fork"]
    function: FunctionRef
    context: dict[str, Any]  # the project's variables only (no per-request key)


class Unfork(TypedDict):
    t: Literal["unfork"]


class Forked(TypedDict):
    t: Literal["forked"]
    pid: int


class Reaped(TypedDict):
    t: Literal["reaped"]
    pid: int
    status: int  # the raw wait status
    left: bool


ToZygote = Configure | Spawn
FromZygote = ZygoteReady | Spawned | SpawnFailed | Exited
ToWorker = Invoke | Preflight | Fork | Unfork
FromWorker = Ready | Failed | Result | Log | Returned | Done | PreflightResult | Forked | Reaped
Frame = ToZygote | FromZygote | ToWorker | FromWorker

# A frame as decoded, before its fields are checked: a map with a text "t".
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
