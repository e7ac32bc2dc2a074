"""The zygote: imports the runtime once, holds no secrets, and forks sandboxed workers on order.

Run by the daemon as ``python -m worker.zygote FD DAEMON_PID`` where FD is its end of a unix
socketpair. The daemon's death is seen by its pid (at start) and by that socket closing (later),
never by the parent being PID 1: in a container the daemon may well be PID 1.
It stays single-threaded so that fork is safe and PDEATHSIG (which follows the forking thread)
means "the zygote died".
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
from collections import deque
from typing import Any, NoReturn, cast

from fnd.protocol import FrameDecoder, ProtocolError, encode, write_frame
from fnd.protocol import messages as m

# Imported here, before any fork, so every worker starts with the runtime already loaded.
from fnd.worker import loop as worker_loop
from fnd.worker import output, sandbox
from fnd.worker.sandbox import process as sandbox_process
from fnd.worker.sandbox.libc import PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG, prctl

_FDS_PER_SPAWN = 3


def _open_clear_refs() -> int | None:
    """This process's /proc/self/clear_refs for writing (resets the peak RSS per call)."""
    try:
        return os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _die_with_parent(daemon: int) -> None:
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # Orphans of killed workers come to us and are reaped, so they stop counting against
    # pids.max and the slot uid's RLIMIT_NPROC.
    try:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    except OSError as exc:
        print(f"fnd zygote: orphans will not be reaped here: {exc}", file=sys.stderr)
    if os.getppid() != daemon:  # it died before PDEATHSIG was set: we were reparented
        print(f"fnd zygote: the daemon (pid {daemon}) is gone", file=sys.stderr)
        os._exit(1)


class Zygote:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pid = os.getpid()  # what workers check their parent against
        self.decoder = FrameDecoder()
        self.fds: deque[int] = deque()
        self.config: m.WorkerConfig = {}
        self.prepared: Any = None
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda _signo, _frame: None)
        self.wake_w = wake_w

    def send(self, message: m.FromZygote) -> None:
        self.sock.sendall(encode(message))

    def receive(self) -> list[m.Message]:
        data, ancdata, _flags, _addr = self.sock.recvmsg(
            1 << 16, socket.CMSG_SPACE(_FDS_PER_SPAWN * 4 * 8)
        )
        if not data:
            raise EOFError
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                self.fds.extend(int.from_bytes(payload[i : i + 4], sys.byteorder)
                                for i in range(0, usable, 4))
        return self.decoder.feed(data)

    def configure(self, message: m.Message) -> None:
        self.config = cast(m.Configure, message)["config"]  # from the daemon: trusted
        self.prepared = sandbox.prepare(self.config.get("sandbox", {}))

    def spawn(self, slot: int) -> None:
        if len(self.fds) < _FDS_PER_SPAWN:
            raise ProtocolError("spawn order arrived without its three fds")
        cmd_r, res_w, out_w = (self.fds.popleft() for _ in range(_FDS_PER_SPAWN))
        try:
            pid = os.fork()
        except OSError as exc:
            failed: m.SpawnFailed = {"t": m.SPAWN_FAILED, "slot": slot,
                                     "reason": f"fork failed: {exc}"}
            self.send(failed)
            pid = -1
        if pid == 0:
            self._become_worker(slot, cmd_r, res_w, out_w)
        for fd in (cmd_r, res_w, out_w):
            os.close(fd)
        if pid > 0:
            spawned: m.Spawned = {"t": m.SPAWNED, "slot": slot, "pid": pid}
            self.send(spawned)

    def _become_worker(self, slot: int, cmd_r: int, res_w: int, out_w: int) -> NoReturn:
        try:
            os.setsid()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            clear_refs = _open_clear_refs()  # once the worker is not dumpable, root owns it
            kept = (cmd_r, res_w) if clear_refs is None else (cmd_r, res_w, clear_refs)
            layers = sandbox.apply(
                self.config.get("sandbox", {}), slot, kept, self.prepared, parent=self.pid,
            )
        except BaseException as exc:  # noqa: BLE001 - report every failure, then exit
            try:
                failed: m.Failed = {"t": m.FAILED, "reason": f"{type(exc).__name__}: {exc}"}
                write_frame(res_w, failed)
            finally:
                os._exit(70)
        worker_loop.serve(cmd_r, res_w, self.config, layers, clear_refs)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            exited: m.Exited = {"t": m.EXITED, "pid": pid, "status": status}
            self.send(exited)

    def run(self) -> NoReturn:
        while True:
            try:
                readable, _, _ = select.select([self.sock.fileno(), self.wake_r], [], [])
            except InterruptedError:
                continue
            if self.wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
                self.reap()
            if self.sock.fileno() in readable:
                try:
                    messages = self.receive()
                except (EOFError, ConnectionError):
                    os._exit(0)  # the daemon is gone; workers die by PDEATHSIG
                for message in messages:
                    self.dispatch(message)

    def dispatch(self, message: m.Message) -> None:
        kind = message["t"]
        if kind == m.CONFIGURE:
            first = not self.config
            self.configure(message)
            if first:
                gc.freeze()  # keep the imported runtime's pages shared copy-on-write
                ready: m.ZygoteReady = {"t": m.ZYGOTE_READY, "pid": os.getpid()}
                self.send(ready)
        elif kind == m.SPAWN:
            self.spawn(int(message["slot"]))
        else:
            raise ProtocolError(f"zygote got unexpected message {kind!r}")


def main() -> NoReturn:
    _die_with_parent(int(sys.argv[2]))
    sock = socket.socket(fileno=int(sys.argv[1]))
    sock.setblocking(True)
    sandbox_process.reset_signals()  # once here, so each worker only undoes the SIGCHLD handler
    # Ctrl-C in a terminal reaches the whole process group: the daemon drains and stops the
    # zygote itself; a KeyboardInterrupt traceback here would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    output.set_log_levels()
    gc.collect()
    try:
        Zygote(sock).run()
    except ProtocolError as exc:
        print(f"fnd zygote: protocol error: {exc}", file=sys.stderr)
        os._exit(2)


if __name__ == "__main__":
    main()
