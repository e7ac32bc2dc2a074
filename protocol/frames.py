"""Length-prefixed msgpack frames: encoder, incremental decoder, blocking and asyncio readers."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
from collections.abc import Callable

import msgpack

from fnd.protocol.messages import Frame, Message

# Largest frame either side accepts: a 4 MiB response body or 1 MiB request plus headroom.
MAX_FRAME = 8 * 1024 * 1024
_HEADER = struct.Struct(">I")
_KEEP_PACKER = 64 * 1024


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame; the channel cannot be trusted."""


class _Packers(threading.local):
    """A msgpack Packer per thread, made once: ``msgpack.packb`` makes one (and its buffer)
    for every frame. Per thread, since a worker's threads send frames too; taken while in
    use, so a frame encoded from inside another (user code in a mapping) gets its own."""

    packer: msgpack.Packer | None = None


_packers = _Packers()


def encode(message: Frame) -> bytes:
    packers = _packers
    packer = packers.packer or msgpack.Packer(use_bin_type=True)
    packers.packer = None
    try:
        payload: bytes = packer.pack(message)
    except BaseException:
        packers.packer = packer  # msgpack empties its buffer on an error
        raise
    if len(payload) <= _KEEP_PACKER:  # a big frame's grown buffer is not kept for life
        packers.packer = packer
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME} byte limit")
    return _HEADER.pack(len(payload)) + payload


def write_frame(fd: int, message: Frame) -> None:
    """Write one whole frame to a blocking fd (worker and zygote side)."""
    view = memoryview(encode(message))
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _decode_payload(payload: bytes | memoryview) -> Message:
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"undecodable frame: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise ProtocolError("frame is not a message map with a 't' field")
    return message


class FrameDecoder:
    """Incremental decoder: feed bytes, get whole messages."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    def feed(self, data: bytes) -> list[Message]:
        if not self._buffer and len(data) >= _HEADER.size:
            # The usual case, one whole frame in one read: decoded without the copies.
            (length,) = _HEADER.unpack_from(data)
            if length <= self._max_frame and len(data) == _HEADER.size + length:
                return [_decode_payload(memoryview(data)[_HEADER.size:])]
        self._buffer += data
        messages: list[Message] = []
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buffer, offset)
            if length > self._max_frame:
                raise ProtocolError(f"frame of {length} bytes exceeds the {self._max_frame} limit")
            end = offset + _HEADER.size + length
            if len(buffer) < end:
                break
            messages.append(_decode_payload(bytes(buffer[offset + _HEADER.size : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still buffered (non-zero at EOF means truncation)."""
        return len(self._buffer)


class BlockingFrameReader:
    """Reads frames from a blocking fd; used by the worker and the zygote."""

    def __init__(self, fd: int, max_frame: int = MAX_FRAME) -> None:
        self._fd = fd
        self._decoder = FrameDecoder(max_frame)
        self._ready: list[Message] = []

    def read(self) -> Message | None:
        """Next message, or None at a clean EOF. Raises ProtocolError on a truncated frame."""
        while not self._ready:
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                if self._decoder.pending:
                    raise ProtocolError("truncated frame at end of stream")
                return None
            self._ready.extend(self._decoder.feed(chunk))
        return self._ready.pop(0)


class AsyncFrameReader(asyncio.Protocol):
    """asyncio protocol for ``loop.connect_read_pipe``: calls back per message and at the end.

    ``on_close`` receives None at a clean EOF, or the ProtocolError / OSError that ended it.
    """

    def __init__(
        self,
        on_message: Callable[[Message], None],
        on_close: Callable[[Exception | None], None],
        max_frame: int = MAX_FRAME,
    ) -> None:
        self._on_message = on_message
        self._on_close = on_close
        self._decoder = FrameDecoder(max_frame)
        self._error: Exception | None = None
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's pipe transports are not asyncio.ReadTransport

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        try:
            messages = self._decoder.feed(data)
        except ProtocolError as exc:
            self._error = exc
            if self.transport is not None:
                self.transport.close()
            return
        for message in messages:
            self._on_message(message)

    def eof_received(self) -> bool | None:
        if self._error is None and self._decoder.pending:
            self._error = ProtocolError("truncated frame at end of stream")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_close(self._error or exc)
