"""fnd serve as PID 1 (a container started without --init): keep PID 1 as a tiny init.

PID 1 of a pid namespace inherits every orphan in it and must reap them, and the kernel
drops any signal it has no handler for. Reaping from inside the daemon would race asyncio's
own waits on its children (the zygote), so PID 1 forks once, before anything else starts:
the child goes on to be the daemon, the parent only forwards stop/reload signals to it,
reaps whatever exits, and leaves with the daemon's exit code. Workers and the zygote watch
the daemon by its pid and their channel to it, never by their parent being PID 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import NoReturn

# What the daemon acts on (stop, reload) plus what an operator may send to a container.
_FORWARDED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                        signal.SIGUSR1, signal.SIGUSR2})
_WAITED = _FORWARDED | {signal.SIGCHLD}


def become_init_if_pid1() -> None:
    """Return in the daemon process; as PID 1, the caller's process stays the init and
    never returns (it exits with the daemon's exit code)."""
    if os.getpid() != 1:
        return
    # Blocked before the fork so that no signal is lost before either side is ready for it.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
    daemon = os.fork()
    if daemon == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return
    _run_init(daemon)


def _run_init(daemon: int) -> NoReturn:
    while True:
        info = signal.sigwaitinfo(_WAITED)
        if info.si_signo != signal.SIGCHLD:
            with contextlib.suppress(ProcessLookupError):  # exiting: its SIGCHLD ends the loop
                os.kill(daemon, info.si_signo)
            continue
        code = _reap_all(daemon)
        if code is not None:
            os._exit(code)


def _reap_all(daemon: int) -> int | None:
    """Reap every child that has exited; the daemon's exit code once it is among them."""
    code = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return code
        if pid == 0:
            return code
        if pid == daemon:
            exit_code = os.waitstatus_to_exitcode(status)
            code = exit_code if exit_code >= 0 else 128 - exit_code
