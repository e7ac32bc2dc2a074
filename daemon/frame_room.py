"""How large a request or response body one worker frame surely carries, given the header
limits and the project's ``.env`` (checked when the configuration is loaded)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fnd.protocol.frames import MAX_FRAME

if TYPE_CHECKING:
    from fnd.daemon.config import Config

# What a worker frame holds besides the body, at most (see frame_problem).
_QUERY_ROOM = 96 * 1024  # a 64 KiB request line whose query is "a&b&c...": 1.5x in msgpack
_FIXED_ROOM = 16 * 1024  # ids, function name and file, method, path, timeout, status, error
_PER_FIELD = 16  # msgpack framing of one header or cookie pair, at most


def largest_request_body(config: Config) -> int:
    """The biggest request body whose INVOKE frame surely fits in MAX_FRAME.

    The body reaches the worker once, parsed into the event (never raw as well), but parsed
    JSON can grow: ``0.0,`` (4 bytes) becomes a 9-byte msgpack float, so 9/4 is the worst
    case (a form grows by 4/3 at most). Next to it travel the headers (a ``Cookie`` header twice:
    raw and parsed), the query, the project's ``.env`` in the context, and a few fixed fields.
    """
    env = sum(len(k.encode()) + len(v.encode()) + _PER_FIELD for k, v in config.env.items())
    headers = 3 * config.max_header_bytes + 2 * _PER_FIELD * config.max_header_count
    room = MAX_FRAME - headers - env - _QUERY_ROOM - _FIXED_ROOM
    return max(0, room * 4 // 9)


def largest_response_body(config: Config) -> int:
    """The biggest response body whose RESULT frame surely fits in MAX_FRAME (body is bytes)."""
    headers = config.max_header_bytes + _PER_FIELD * config.max_header_count
    return max(0, MAX_FRAME - headers - 4 * _FIXED_ROOM)


def frame_problem(config: Config) -> str | None:
    """Why a worker frame could not carry these limits (such a request would fail every
    time), or None when it can."""
    for name, largest in (("max_request_body", largest_request_body(config)),
                          ("max_response_body", largest_response_body(config))):
        value = getattr(config, name)
        if value > largest:
            return (
                f"{name} = {value} is too large: with this max_header_bytes, max_header_count "
                f"and .env, the most one {MAX_FRAME} byte worker frame surely carries is "
                f"{largest}"
            )
    return None
