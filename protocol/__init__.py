"""Wire format between the daemon and the zygote/workers: the only code both sides import.

Frames are a 4-byte big-endian length followed by one msgpack map. They travel on dedicated
pipe fds, never on a worker's stdout/stderr. A frame that is truncated, oversized or not a
msgpack map raises :class:`ProtocolError`; the daemon answers that by killing the worker.
"""

from fnd.protocol.frames import (
    MAX_FRAME,
    AsyncFrameReader,
    BlockingFrameReader,
    FrameDecoder,
    ProtocolError,
    encode,
    write_frame,
)

__all__ = [
    "MAX_FRAME",
    "AsyncFrameReader",
    "BlockingFrameReader",
    "FrameDecoder",
    "ProtocolError",
    "encode",
    "write_frame",
]
