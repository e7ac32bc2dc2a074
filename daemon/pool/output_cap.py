"""The daemon's own cap on the function output it logs per invocation.

The worker caps its output at ``max_output`` per invocation and says once how much it
dropped, but the daemon does not rely on a worker behaving: it counts what it logs for each
worker and invocation (its own view of which call the worker holds, never the id a frame
claims), frames and raw fd 1/2 lines alike, and past ``max_output`` plus some slack logs one
"function output truncated" line and drops the rest until the worker's next call. Each
worker handle (daemon/pool/worker_proc.py) holds its own cap and its generation's limit.
"""

from __future__ import annotations

from enum import Enum

from fnd.protocol.messages import line_cost

# Room above max_output for what an honest worker may add: its own truncation note, and raw
# fd 1/2 output (C code, subprocesses), which the worker cannot count.
SLACK = 64 * 1024


class Verdict(Enum):
    LOG = "log"
    TRUNCATE = "truncate"  # the first line over the cap: log that output is being cut
    DROP = "drop"


class OutputCap:
    """Bytes of function output logged for one worker's current invocation."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._used = 0
        self._cut = False

    def admit(self, key: str | None, line: str, max_output: int) -> Verdict:
        """Count ``line`` against invocation ``key`` (None: between invocations)."""
        if key != self._key:
            self._key, self._used, self._cut = key, 0, False
        if not max_output:
            return Verdict.LOG
        if self._cut:
            return Verdict.DROP
        self._used += line_cost(line)
        if self._used <= max_output + SLACK:
            return Verdict.LOG
        self._cut = True
        return Verdict.TRUNCATE
