"""What a response may carry on the wire, checked the same way on both sides of the pipe.

The worker checks a function's response with these rules and explains a violation to the
function's author; the daemon checks every RESULT frame with the same rules again, because a
worker runs user code and can write frames of its own (docs/security.md).
"""

from __future__ import annotations

import re

STATUS_MIN, STATUS_MAX = 200, 599
# An HTTP token (RFC 9110 5.6.2): what a header name may be.
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than TAB: aiohttp refuses them, and CR/LF would split the header.
BAD_VALUE_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_bytes(name: str, value: str) -> int:
    """A header line's size on the wire: name, ": ", value (UTF-8) and CRLF."""
    return len(name) + len(value.encode("utf-8", "surrogatepass")) + 4
