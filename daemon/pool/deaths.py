"""Why a worker left: one name per cause, counted in `restarts` and written in its log line.

A worker leaves in one of three ways, and the cause is decided once, by whoever saw it first:

- the pool retired it (recycling, reload, idle, shutdown): its command pipe was closed;
- the daemon killed it (time limit, leftovers, protocol error, failed start, zygote gone);
- it died on its own: the cause comes from its wait status and its cgroup's OOM counter.
"""

from __future__ import annotations

import os
import signal

# Planned: the pool retired the worker.
MAX_REQUESTS = "max_requests"
MAX_RSS = "max_rss"
RELOAD = "reload"
IDLE = "idle"
MAX_AGE = "max_age"
ISOLATION = "isolation"  # isolation = "invocation": every worker serves one call
PREFLIGHT = "preflight"  # it loaded a new generation's functions to check them
STOPPING = "stopping"  # the daemon is stopping
DISCARDED = "discarded"  # a reload's new worker, thrown away because the reload failed
# Decided by the daemon: it killed the worker.
TIMEOUT = "timeout"
UNCLEAN = "unclean"  # something the invocation started outlived it
PROTOCOL = "protocol"  # a malformed or unexpected frame: the channel cannot be trusted
IDLE_CPU = "idle_cpu"  # it used CPU while the daemon counted it idle
START_FAILED = "start_failed"
ZYGOTE = "zygote"  # the zygote died and took its workers along
# Unplanned: the worker died under us.
EXIT = "exit"
SIGNAL = "signal"
OOM = "oom"

UNPLANNED = frozenset({EXIT, SIGNAL, OOM, PROTOCOL, START_FAILED, ZYGOTE, IDLE_CPU})
# Not restarts: the daemon is going, or a reload gave up. A dead zygote is counted once by
# the pool, not once per worker it took along.
NOT_COUNTED = frozenset({STOPPING, DISCARDED, ZYGOTE, ISOLATION, PREFLIGHT})

# Every cause `fnd_worker_restarts_total` can count (ZYGOTE once per zygote death): its
# series exist from start, at 0, so a rate() or an alert works before the first restart.
COUNTED = (
    MAX_REQUESTS, MAX_RSS, RELOAD, IDLE, MAX_AGE, TIMEOUT, UNCLEAN, PROTOCOL, IDLE_CPU,
    START_FAILED, ZYGOTE, EXIT, SIGNAL, OOM,
)


def describe_exit(status: int | None) -> str:
    """A wait status as words: 'exited with code 3', 'killed by SIGSEGV'."""
    if status is None or status < 0:
        return "died (exit status unknown)"
    if os.WIFSIGNALED(status):
        signo = os.WTERMSIG(status)
        try:
            name = signal.Signals(signo).name
        except ValueError:
            name = f"signal {signo}"
        return f"killed by {name}"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return f"died (wait status {status})"


def describe_returncode(code: int) -> str:
    """asyncio's returncode (minus the signal number when killed) as words."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def classify(status: int | None, oom_killed: bool) -> tuple[str, str]:
    """(cause, words) for a worker that died without being told to."""
    if oom_killed:
        return OOM, "worker exceeded its memory limit"
    words = f"worker {describe_exit(status)}"
    if status is not None and status >= 0 and os.WIFSIGNALED(status):
        return SIGNAL, words
    return EXIT, words


def explain(status: int | None, oom_killed: bool, *, closed_early: bool, was_ready: bool,
            failure: str | None) -> tuple[str, str]:
    """(cause, words) for a worker that died without being told to, knowing its story: one
    that closed its result pipe and was then killed broke the protocol; one that exited
    before READY failed to start (`failure`: what it or the zygote said)."""
    cause, words = classify(status, oom_killed)
    if closed_early and cause in (SIGNAL, EXIT) and (
        status is None or status < 0
        or (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL)
    ):
        return PROTOCOL, "closed its result pipe and was killed"
    if not was_ready and cause == EXIT:
        return START_FAILED, failure or f"{words} before it was ready"
    return cause, words
