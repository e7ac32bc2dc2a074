"""A stand-in for the pool under the real front-end: what FrontEnd calls (``invoke``), no
processes. It ends each call the way the real pool does (daemon/pool/pool.py): a refused call is
resolved without a worker; a call a worker takes gets a pid, is answered, then completed.
"""

from __future__ import annotations

import json
import time

from fnd.daemon import calls
from fnd.daemon.calls import Call, Outcome, text_outcome

WORKER_PID = 4242


class FakePool:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.full = False  # every call is refused: "the queue is full"
        self.answer: Outcome | None = None  # what the "worker" answers; None: echo the call

    async def invoke(self, call: Call) -> Outcome:
        self.calls.append(call)
        call.queued = time.perf_counter()
        if self.full:
            call.resolve(text_outcome(503, calls.OVERLOAD,
                                      "all workers are busy and the queue is full",
                                      Retry_After="1"))
            return await call.result
        call.started = time.perf_counter()
        call.worker_pid = WORKER_PID
        call.resolve(self.answer or _echo(call))
        call.cpu, call.rss = 0.002, 1 << 20  # DONE: the worker is done with the call
        call.complete()
        return await call.result


def _echo(call: Call) -> Outcome:
    body = json.dumps({"event": call.event, "context": call.context}).encode()
    return Outcome(200, [("Content-Type", "application/json")], body, calls.OK)
