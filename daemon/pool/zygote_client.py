"""The daemon's end of the zygote channel: start the zygote, order workers, hear of exits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from fnd.daemon.logs import get_logger
from fnd.daemon.pool.deaths import describe_returncode
from fnd.protocol import FrameDecoder, ProtocolError, encode
from fnd.protocol import messages as m

_log = get_logger("fnd.zygote")
ZYGOTE_MODULE = "fnd.worker.zygote"  # run as `python -m ZYGOTE_MODULE FD DAEMON_PID`
_STDERR_TAIL = 5  # lines of the zygote's stderr kept to explain why it died
_EXIT_WAIT = 1.0  # how long a lost channel waits for the zygote's exit status


class ZygoteError(Exception):
    """The zygote could not start or stopped answering."""


@dataclass
class SpawnedPipes:
    """The daemon's ends of a new worker's pipes."""

    cmd_w: int  # invoke frames to the worker
    res_r: int  # ready/result/log/done frames from the worker
    out_r: int  # the worker's stdout+stderr, plain text


# The zygote is started with nothing of the daemon's environment
# (docs/sandbox.md#what-a-function-cannot-do).
_ZYGOTE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


async def _writable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    loop.add_writer(sock.fileno(), wake)
    try:
        await waiter
    finally:
        loop.remove_writer(sock.fileno())


class ZygoteClient:
    def __init__(
        self,
        on_spawned: Callable[[int, int], None],
        on_spawn_failed: Callable[[int, str], None],
        on_exited: Callable[[int, int], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self._on_spawned = on_spawned
        self._on_spawn_failed = on_spawn_failed
        self._on_exited = on_exited
        self._on_lost = on_lost
        self._sock: socket.socket | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[int] | None = None
        self._send_lock = asyncio.Lock()
        self._closing = False
        self._alive = False
        self._stderr: asyncio.Task[None] | None = None
        self._tail: deque[str] = deque(maxlen=_STDERR_TAIL)

    @property
    def alive(self) -> bool:
        """False from the moment its channel closes: no spawn order should be sent then."""
        return self._alive

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self, config: m.WorkerConfig, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._closing = False
        try:
            self._process = await asyncio.create_subprocess_exec(
                # -P: the installed runtime, never a same-named folder in the current directory.
                sys.executable, "-P", "-m", ZYGOTE_MODULE, str(theirs.fileno()), str(os.getpid()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,  # logged line by line; its tail explains a death
                env=_ZYGOTE_ENV,
                cwd="/",
            )
        except OSError as exc:
            ours.close()
            raise ZygoteError(f"cannot run the zygote: {exc}") from None
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._alive = True
        self._tail.clear()
        assert self._process.stderr is not None
        self._stderr = asyncio.create_task(self._read_stderr(self._process.stderr),
                                           name="zygote-stderr")
        self._ready = loop.create_future()
        self._reader = asyncio.create_task(self._read_loop(ours), name="zygote-reader")
        try:
            await self.configure(config)
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            await self.stop()
            raise ZygoteError(f"the zygote did not become ready within {timeout:.0f} s") from None
        except (ZygoteError, OSError) as exc:
            reason = await self._death_reason(str(exc))
            await self.stop()
            raise ZygoteError(reason) from None

    async def configure(self, config: m.WorkerConfig) -> None:
        await self._send(m.Configure(t=m.CONFIGURE, config=config))

    async def spawn(self, slot: int) -> SpawnedPipes:
        """Create the worker's pipes and order the fork; the pid arrives via on_spawned."""
        cmd_r, cmd_w = os.pipe2(os.O_CLOEXEC)
        res_r, res_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        try:
            await self._send(m.Spawn(t=m.SPAWN, slot=slot), fds=(cmd_r, res_w, out_w))
        except BaseException:
            for fd in (cmd_w, res_r, out_r):
                os.close(fd)
            raise
        finally:
            for fd in (cmd_r, res_w, out_w):
                os.close(fd)
        return SpawnedPipes(cmd_w=cmd_w, res_r=res_r, out_r=out_r)

    async def _send(self, message: m.ToZygote, fds: tuple[int, ...] = ()) -> None:
        sock = self._sock
        if sock is None:
            raise ZygoteError("the zygote is not running")
        data = encode(message)
        loop = asyncio.get_running_loop()
        async with self._send_lock:
            sent = 0
            while fds and sent == 0:
                # The fds must ride on the frame's first bytes: retry until the buffer has room.
                try:
                    sent = socket.send_fds(sock, [data], list(fds))
                except BlockingIOError:
                    await _writable(loop, sock)
            if sent < len(data):
                await loop.sock_sendall(sock, data[sent:])

    async def _read_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        decoder = FrameDecoder()
        reason = "the zygote closed its channel"
        try:
            while True:
                data = await loop.sock_recv(sock, 1 << 16)
                if not data:
                    break
                for message in decoder.feed(data):
                    self._dispatch(message)
        except ProtocolError as exc:
            reason = f"protocol error from the zygote: {exc}"
        except OSError as exc:
            reason = f"zygote channel failed: {exc}"
        self._alive = False
        if not self._closing:
            reason = await self._death_reason(reason)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ZygoteError(reason))
            self._ready.exception()  # retrieved: start() reports it
            return
        if not self._closing:
            self._on_lost(reason)

    async def _death_reason(self, fallback: str) -> str:
        """Why the zygote went: its exit status and the last line it wrote to stderr."""
        process = self._process
        if process is None:
            return fallback
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(process.wait()), _EXIT_WAIT)
        if process.returncode is None:
            return fallback
        words = f"the zygote {describe_returncode(process.returncode)}"
        if self._stderr is not None:
            # Its stderr reaches EOF when it exits: let the reader catch the last lines.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._stderr), _EXIT_WAIT)
        last = next((line for line in reversed(self._tail) if line.strip()), "")
        return f"{words}: {last}" if last else words

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail.append(line)
            _log.warning("zygote output", line=line)

    def _dispatch(self, message: m.Message) -> None:
        kind = message["t"]
        if kind == m.ZYGOTE_READY:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(int(message["pid"]))
        elif kind == m.SPAWNED:
            self._on_spawned(int(message["slot"]), int(message["pid"]))
        elif kind == m.SPAWN_FAILED:
            self._on_spawn_failed(int(message["slot"]), str(message["reason"]))
        elif kind == m.EXITED:
            self._on_exited(int(message["pid"]), int(message["status"]))
        else:
            raise ProtocolError(f"unexpected message {kind!r} from the zygote")

    async def stop(self) -> None:
        self._closing = True
        self._alive = False
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
        for task in (self._reader, self._stderr):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._reader = self._stderr = None
