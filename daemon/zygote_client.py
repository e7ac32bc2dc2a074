"""The daemon's end of the zygote channel: start the zygote, order workers, hear of exits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

from protocol import FrameDecoder, ProtocolError, encode
from protocol import messages as m


class ZygoteError(Exception):
    """The zygote could not start or stopped answering."""


@dataclass
class SpawnedPipes:
    """The daemon's ends of a new worker's pipes."""

    cmd_w: int  # invoke frames to the worker
    res_r: int  # ready/result/log/done frames from the worker
    out_r: int  # the worker's stdout+stderr, plain text


# The zygote is started with nothing of the daemon's environment (SPEC 7.3).
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

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self, config: m.WorkerConfig, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._closing = False
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker.zygote", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                env=_ZYGOTE_ENV,
                cwd="/",
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._ready = loop.create_future()
        self._reader = asyncio.create_task(self._read_loop(ours), name="zygote-reader")
        await self.configure(config)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            await self.stop()
            raise ZygoteError(f"the zygote did not become ready within {timeout:.0f} s") from None

    async def configure(self, config: m.WorkerConfig) -> None:
        await self._send({"t": m.CONFIGURE, "config": config})

    async def spawn(self, slot: int) -> SpawnedPipes:
        """Create the worker's pipes and order the fork; the pid arrives via on_spawned."""
        cmd_r, cmd_w = os.pipe2(os.O_CLOEXEC)
        res_r, res_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        try:
            await self._send({"t": m.SPAWN, "slot": slot}, fds=(cmd_r, res_w, out_w))
        except BaseException:
            for fd in (cmd_w, res_r, out_r):
                os.close(fd)
            raise
        finally:
            for fd in (cmd_r, res_w, out_w):
                os.close(fd)
        return SpawnedPipes(cmd_w=cmd_w, res_r=res_r, out_r=out_r)

    async def _send(self, message: m.Message, fds: tuple[int, ...] = ()) -> None:
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
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ZygoteError(reason))
        if not self._closing:
            self._on_lost(reason)

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
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
