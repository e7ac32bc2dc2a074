"""The start-up self-check: one canary invocation proving a few escapes fail.

After the pool is up and before it listens, ``fnd serve`` runs worker/canary_function.py once
through the normal pool path (a real worker, its real sandbox) and logs one line,
"sandbox self-check", with each attempt's outcome. A worker's layer report says what it
*applied*; the canary shows that what it applied *works* on this host. In strict mode an
escape, or a canary that could not run, stops `fnd serve`; in permissive mode it is a warning.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from fnd import worker
from fnd.daemon.calls import Call, Invocation
from fnd.daemon.config import Config
from fnd.daemon.logs import get_logger
from fnd.daemon.pool import deaths
from fnd.daemon.pool.pool import Pool, PoolError

_log = get_logger("fnd")
FUNCTION_FILE = str(Path(worker.__path__[0]) / "canary_function.py")
ROUTE = "/.fnd/self-check"
_HIDDEN = (".env", "fnd.toml")  # project files a worker must never read
_TIMEOUT = 10.0
KILL_CAUSE = "self_check"  # counted in restarts when the canary's worker is killed
# The names of the zygote's fixed environment and of a worker's base (worker/environ.py):
# the same names in the daemon's environment are not a leak.
_OWN_ENV = frozenset({"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"})


class SelfCheckFailed(PoolError):
    """An escape worked (or the canary could not run) in strict mode; the message says which."""


@dataclass
class SelfCheck:
    checks: dict[str, str] = field(default_factory=dict)  # attempt -> errno name, "ok" = escape
    error: str | None = None  # the canary did not run to the end
    worker_pid: int | None = None

    def escapes(self, tolerated: frozenset[str] = frozenset()) -> list[str]:
        return [name for name, value in self.checks.items()
                if name not in tolerated and (value == "ok" or value.startswith("visible"))]


async def run_canary(pool: Pool, project_dir: Path, secrets: tuple[Path, ...] = ()) -> SelfCheck:
    """One canary invocation through ``pool``; what each attempt ran into. ``secrets``: files
    outside the project a worker must not read either (the `env_file`)."""
    loop = asyncio.get_running_loop()
    call = Call(
        invocation=Invocation(pool.stats, "self-check", "GET", ROUTE, time.perf_counter(),
                              None, route=ROUTE),
        id="self-check",
        function={"name": ROUTE, "file": FUNCTION_FILE},
        event={
            "project": str(project_dir),
            "hidden": [name for name in _HIDDEN if (project_dir / name).exists()]
            + [str(path) for path in secrets],
            "daemon_pid": os.getpid(),
        },
        context={},  # no secrets for the canary
        timeout=_TIMEOUT,
        result=loop.create_future(),
    )
    outcome = await pool.invoke(call)
    check = SelfCheck(worker_pid=call.worker_pid)
    if outcome.status != 200:
        check.error = f"status {outcome.status}: {outcome.reason or outcome.body[:200]!r}"
        return check
    try:
        answer = json.loads(outcome.body)
        check.checks = {str(k): str(v) for k, v in answer["checks"].items()}
        environ = [str(name) for name in answer["environ"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        check.error = f"unreadable answer: {exc!r}"
        return check
    leaked = sorted(name for name in environ if name in os.environ and name not in _OWN_ENV)
    check.checks["see daemon environment"] = "visible: " + ", ".join(leaked) if leaked else "hidden"
    return check


def tolerated_escapes() -> frozenset[str]:
    """Without root, workers share the daemon's uid: only Landlock's signal scoping (ABI 6+)
    stops a signal to the daemon, and fnd supports running without root on older kernels."""
    return frozenset() if os.geteuid() == 0 else frozenset({"signal daemon"})


async def self_check(pool: Pool, config: Config) -> SelfCheck:
    """Run the canary and log "sandbox self-check"; in strict mode raise SelfCheckFailed
    (after stopping the pool) if the canary escaped or could not run."""
    secrets = (config.project_dir / config.env_file,) if config.env_file else ()
    check = await run_canary(pool, config.project_dir, secrets)
    escapes = check.escapes(tolerated_escapes())
    passed = check.error is None and not escapes
    log = _log.info if passed else _log.error if config.sandbox == "strict" else _log.warning
    log("sandbox self-check", passed=passed, checks=check.checks, escapes=escapes,
        error=check.error, worker_pid=check.worker_pid, sandbox=config.sandbox)
    if escapes:
        _kill_worker(pool, check.worker_pid, "sandbox self-check: escapes " + ", ".join(escapes))
    elif config.isolation == "invocation":
        # It ran the canary itself: no isolated call may be forked from it (docs/pool.md).
        for proc in list(pool.workers.values()):
            if check.worker_pid is not None and proc.pid == check.worker_pid:
                proc.retire(deaths.ISOLATION)
    if passed or config.sandbox != "strict":
        return check
    await pool.stop(drain_timeout=0)
    if check.error is not None:
        raise SelfCheckFailed(f"sandbox self-check could not run: {check.error}")
    details = ", ".join(f"{name} ({check.checks[name]})" for name in escapes)
    raise SelfCheckFailed(f"sandbox self-check failed: a worker could {details}; "
                          "set sandbox = \"permissive\" to start anyway, unprotected")


def _kill_worker(pool: Pool, pid: int | None, reason: str) -> None:
    """A worker that escaped may hold a trace on the zygote or root: never reuse it."""
    for proc in list(pool.workers.values()):
        if pid is not None and proc.pid == pid:
            proc.kill(reason, KILL_CAUSE)
