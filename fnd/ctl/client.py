"""The operator's side of the control socket: send one JSON request, read one JSON answer.

The server side, and the socket's default path, are in ``fnd.daemon.ops.control``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def request(path: str, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to a control socket and return its answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
    try:
        writer.write(json.dumps(payload).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    answer = json.loads(line)
    if not isinstance(answer, dict):
        raise ValueError("control socket answered something that is not a JSON object")
    return answer
