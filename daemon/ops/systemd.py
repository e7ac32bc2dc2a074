"""systemd integration without a dependency: sd_notify, the watchdog and socket activation.

systemd hands us its settings in environment variables (NOTIFY_SOCKET, WATCHDOG_USEC,
WATCHDOG_PID, LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES). They are taken out of os.environ the
first time anything here looks at them, so the zygote and the workers we start never see
them (a worker must not be able to tell systemd "READY" or "STOPPING"). Every function below
reads the same taken copy, so it does not matter whether Notifier() or listen_fds() runs first.

Outside systemd every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time

_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
)
SD_LISTEN_FDS_START = 3  # systemd passes activated sockets from fd 3 on

_taken: dict[str, str] = {}


def take_environment() -> dict[str, str]:
    """Move systemd's variables out of os.environ (into a module copy) and return that copy.

    Call it as early as possible in `fnd serve`, before anything starts a child process.
    """
    for name in _VARIABLES:
        value = os.environ.pop(name, None)
        if value is not None:
            _taken[name] = value
    return dict(_taken)


def socket_activated() -> bool:
    """Whether systemd passed listening sockets to this process (without taking them)."""
    env = take_environment()
    return "LISTEN_FDS" in env and "LISTEN_PID" in env and _for_this_process(env, "LISTEN_PID")


def _for_this_process(env: dict[str, str], pid_variable: str) -> bool:
    """True unless `pid_variable` is set and names another process (we were forked/exec'd)."""
    wanted = env.get(pid_variable)
    if wanted is None:
        return True
    try:
        return int(wanted) == os.getpid()
    except ValueError:
        return False


class Notifier:
    """sd_notify(3): one datagram per state change to $NOTIFY_SOCKET."""

    def __init__(self) -> None:
        env = take_environment()
        self._env = env
        self._address = _notify_address(env.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send "KEY=value" fields in one datagram; False when not under systemd or it failed.

        Failures are swallowed: losing a status line must never take the daemon down.
        """
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self._address)
        except OSError:
            return False
        return True

    def ready(self) -> bool:
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        # A newline would start a new (bogus) field in the datagram.
        return self.send("STATUS=" + " ".join(text.splitlines()))

    def reloading(self) -> bool:
        # systemd >= 253 wants the monotonic timestamp with RELOADING=1; older ones ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """WatchdogSec= in seconds, or None when the watchdog is off or meant for another pid."""
        if self._address is None or not _for_this_process(self._env, "WATCHDOG_PID"):
            return None
        try:
            usec = int(self._env.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        return usec / 1_000_000 if usec > 0 else None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _notify_address(value: str) -> str | bytes | None:
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()  # abstract namespace
    return None  # unset, or a kind we do not speak (vsock:)


async def watchdog_loop(notifier: Notifier, interval: float) -> None:
    """Ping every interval/2, from the event loop itself: a stuck loop stops the pings and
    systemd restarts us. Run as a task; cancel it at shutdown."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval / 2)


def listen_fds() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (fd 3 …), CLOEXEC and non-blocking.

    Empty when not socket-activated or when LISTEN_PID names another process.
    """
    env = take_environment()
    # systemd always sets LISTEN_PID; without it (or with another pid) the fds are not ours.
    if "LISTEN_FDS" not in env or "LISTEN_PID" not in env:
        return []
    if not _for_this_process(env, "LISTEN_PID"):
        return []
    try:
        count = int(env["LISTEN_FDS"])
    except ValueError:
        return []
    sockets: list[socket.socket] = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(0, count)):
        with contextlib.suppress(OSError):
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)  # not for our children
        try:
            sock = socket.socket(fileno=fd)  # family and type are read from the fd
        except OSError:
            continue  # not a socket (ListenFIFO=...): not something we can serve on
        sock.setblocking(False)
        sockets.append(sock)
    # Consumed: a second call (e.g. after a reload) must not wrap the same fds again.
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        _taken.pop(name, None)
    return sockets
