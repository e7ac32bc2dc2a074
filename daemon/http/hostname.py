"""Which host names fnd accepts from a client (``Host``, ``X-Forwarded-Host``) or from config.

What a function sees as ``context.DOMAIN_NAME`` comes from here, and handlers build URLs from
it, so only a plain host name gets through: RFC 1123 labels (letters, digits, inner hyphens;
an underscore is also accepted, as container and service names use it), which covers IPv4
literals, or a bracketed IPv6 literal; optionally ``:port``. Anything else (spaces, slashes,
``@``, bytes that are not ASCII) is refused by the caller with 400, as nginx does.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from urllib.parse import urlsplit

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_NAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}\.?(?::[0-9]{{1,5}})?")
_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::[0-9]{1,5})?")
_MAX_NAME = 253 + 6  # longest DNS name, plus ":65535"


@functools.lru_cache(maxsize=256)  # checked per request; a site sees a handful of hosts
def valid_host(host: str) -> bool:
    """True for ``example.com``, ``example.com:8443``, ``10.0.0.1``, ``[::1]:3000``."""
    if len(host) > _MAX_NAME:
        return False
    if _NAME.fullmatch(host):
        return True
    bracketed = _BRACKETED.fullmatch(host)
    if bracketed is None:
        return False
    try:
        ipaddress.IPv6Address(bracketed.group(1))
    except ValueError:
        return False
    return True


def url_host(url: str) -> str:
    """The ``host[:port]`` of a configured URL (no user info); "" if it has none."""
    parts = urlsplit(url)
    if not parts.hostname:
        return ""
    host = parts.netloc.rpartition("@")[2]
    return host if valid_host(host) else ""
