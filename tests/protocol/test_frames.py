"""Frames: round trips, partial reads, oversized and garbage input, both readers over real pipes."""

from __future__ import annotations

import asyncio
import os
import struct

import msgpack
import pytest

from fnd.protocol import (
    MAX_FRAME,
    AsyncFrameReader,
    BlockingFrameReader,
    FrameDecoder,
    ProtocolError,
    encode,
    write_frame,
)

pytestmark = pytest.mark.unit

SAMPLE = {"t": "result", "id": "x-1", "status": 200, "headers": [["A", "b"]], "body": b"\x00\xff"}


def test_round_trip_keeps_types() -> None:
    [decoded] = FrameDecoder().feed(encode(SAMPLE))
    assert decoded == SAMPLE
    assert isinstance(decoded["body"], bytes)


def test_byte_by_byte_feeding_yields_each_message_once() -> None:
    data = encode(SAMPLE) + encode({"t": "done", "id": "x-1"})
    decoder = FrameDecoder()
    seen = []
    for i in range(len(data)):
        seen.extend(decoder.feed(data[i : i + 1]))
    assert [m["t"] for m in seen] == ["result", "done"]
    assert decoder.pending == 0


def test_oversized_length_is_refused_before_buffering() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME + 1))


def test_encode_refuses_oversized_message() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        encode({"t": "x", "body": b"\0" * (MAX_FRAME + 1)})


@pytest.mark.parametrize(
    "payload",
    [b"\xc1garbage", msgpack.packb([1, 2, 3]), msgpack.packb({"no": "type"}), msgpack.packb(7)],
)
def test_garbage_payloads_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack(">I", len(payload)) + payload)


def test_blocking_reader_over_pipe_and_truncation() -> None:
    r, w = os.pipe()
    try:
        write_frame(w, SAMPLE)
        os.write(w, encode(SAMPLE)[:7])  # a truncated second frame
        os.close(w)
        reader = BlockingFrameReader(r)
        assert reader.read() == SAMPLE
        with pytest.raises(ProtocolError, match="truncated"):
            reader.read()
    finally:
        os.close(r)


def test_blocking_reader_clean_eof_returns_none() -> None:
    r, w = os.pipe()
    os.close(w)
    try:
        assert BlockingFrameReader(r).read() is None
    finally:
        os.close(r)


def test_large_frame_crosses_pipe_buffer() -> None:
    message = {"t": "invoke", "body": os.urandom(3 * 1024 * 1024)}

    async def scenario() -> list[dict[str, object]]:
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        received: list[dict[str, object]] = []
        closed: asyncio.Future[Exception | None] = loop.create_future()
        transport, _ = await loop.connect_read_pipe(
            lambda: AsyncFrameReader(received.append, closed.set_result),
            os.fdopen(r, "rb", buffering=0),
        )
        await asyncio.to_thread(lambda: (write_frame(w, message), os.close(w)))
        assert await asyncio.wait_for(closed, 10) is None
        return received

    assert asyncio.run(scenario()) == [message]


def test_async_reader_reports_garbage_and_truncation() -> None:
    async def scenario(data: bytes) -> Exception | None:
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        closed: asyncio.Future[Exception | None] = loop.create_future()
        await loop.connect_read_pipe(
            lambda: AsyncFrameReader(lambda m: None, closed.set_result),
            os.fdopen(r, "rb", buffering=0),
        )
        os.write(w, data)
        os.close(w)
        return await asyncio.wait_for(closed, 10)

    assert isinstance(asyncio.run(scenario(struct.pack(">I", 3) + b"\xc1\xc1\xc1")), ProtocolError)
    truncated = asyncio.run(scenario(encode(SAMPLE)[:-1]))
    assert isinstance(truncated, ProtocolError) and "truncated" in str(truncated)


def test_a_whole_frame_alone_and_after_a_partial_one_decode_the_same() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode(SAMPLE)) == [SAMPLE]  # one whole frame: the no-copy path
    data = encode(SAMPLE)
    assert decoder.feed(data[:5]) == []
    assert decoder.feed(data[5:]) == [SAMPLE]  # completes the buffered one
    assert decoder.feed(data + data[:3]) == [SAMPLE] and decoder.pending == 3
    with pytest.raises(ProtocolError):  # a frame of garbage on the no-copy path too
        FrameDecoder().feed(struct.pack(">I", 1) + b"\xc1")


def test_encode_after_a_failure_and_from_inside_an_encode_stays_correct() -> None:
    with pytest.raises(TypeError):
        encode({"t": "x", "bad": object()})
    assert FrameDecoder().feed(encode(SAMPLE)) == [SAMPLE]  # no leftover of the failed one

    inner: list[bytes] = []

    class Sneaky(dict[str, object]):  # a mapping whose packing runs Python code
        def items(self):  # type: ignore[override]
            inner.append(encode({"t": "log", "line": "from inside"}))
            return super().items()

    outer = encode({"t": "result", "nested": Sneaky(a=1)})
    assert FrameDecoder().feed(outer) == [{"t": "result", "nested": {"a": 1}}]
    assert all(FrameDecoder().feed(frame) == [{"t": "log", "line": "from inside"}]
               for frame in inner)
    assert encode(SAMPLE) == encode(dict(SAMPLE))  # the per-thread packer is back


def test_big_frames_round_trip_and_small_ones_after_them() -> None:
    big = {"t": "result", "body": b"\x01" * (1 << 20)}
    assert FrameDecoder().feed(encode(big)) == [big]
    assert FrameDecoder().feed(encode(SAMPLE)) == [SAMPLE]
