"""Where a request comes from: read once per request, before routing, and used by every step.

Routing (``context.DOMAIN_NAME``), the signature check (which URL Twilio signed) and the
invocation's log line (client address, request id) all need the same facts, and some of them
depend on whether the peer is a trusted proxy. :func:`read_origin` decides that once and reads
each forwarded header once, so the steps cannot disagree and nothing is parsed twice.

A forwarded header holding a comma-separated chain is read from its *last* element: the one
the nearest (trusted) proxy added; earlier elements came from the client. Headers from a peer
that is not a trusted proxy are ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from fnd.daemon.config import Config, ConfigError
from fnd.daemon.http.hostname import valid_host

if TYPE_CHECKING:
    from aiohttp.web import BaseRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # what fnd accepts as a forwarded request id


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """Peers whose X-Forwarded-* headers are believed: addresses, networks and ``"unix"``."""

    networks: tuple[Network, ...] = ()
    unix: bool = False  # a peer on the unix socket (e.g. nginx) is trusted

    @classmethod
    def parse(cls, items: Iterable[str]) -> TrustedProxies:
        """From config strings (``"unix"``, ``"127.0.0.1"``, ``"10.0.0.0/8"``); ValueError."""
        networks: list[Network] = []
        unix = False
        for item in items:
            item = item.strip()
            if item == "unix":
                unix = True
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(
                    f"trusted proxy {item!r} is not 'unix', an IP address or a network"
                ) from None
        return cls(tuple(networks), unix)

    def trusts(self, peer: str | None) -> bool:
        """``peer`` as aiohttp's ``request.remote``: None or "" on a unix socket."""
        if not peer:
            return self.unix
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(peer.partition("%")[0])  # drop an IPv6 zone
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def parse_proxies(config: Config) -> TrustedProxies:
    try:
        return TrustedProxies.parse(config.trusted_proxies)
    except ValueError as exc:
        raise ConfigError(f"trusted_proxies: {exc}") from None


class Origin(NamedTuple):
    """The facts about where one request comes from (a tuple: cheap to build per request)."""

    # The peer is a trusted proxy. A TCP peer that forwards nothing is not tested (its
    # address is not parsed): False, as believing it would change nothing.
    trusted: bool
    client: str | None  # the address a trusted proxy forwarded, else the peer's
    host: str | None  # the host the client used: forwarded by a trusted proxy, else Host
    scheme: str | None  # "http"/"https" as a trusted proxy forwarded it; None: the connection's
    request_id: str | None  # a sane X-Request-Id from a trusted proxy
    refused: str | None  # why the host is malformed (the request is answered 400), or None


def read_origin(request: BaseRequest, proxies: TrustedProxies) -> Origin:
    """The request's :class:`Origin`; never raises (a bad host is reported in ``refused``).

    Per request, so it does the least it can: an untrusted peer's forwarded headers are not
    even looked up, and a TCP peer's address is parsed only when it forwards something.
    """
    headers = request.headers
    peer = request.remote
    host = headers.get("Host")
    refused = None
    if host is not None and not valid_host(host):
        refused = f"invalid Host header {shown(host)}"
    if peer:
        if not proxies.networks:  # no TCP peer is trusted
            return Origin(False, peer, host, None, None, refused)
    elif not proxies.unix:
        return Origin(False, None, host, None, None, refused)
    forwarded_for = headers.get("X-Forwarded-For")
    forwarded_host = headers.get("X-Forwarded-Host")
    forwarded_proto = headers.get("X-Forwarded-Proto")
    request_id = headers.get("X-Request-Id")
    if peer and not ((forwarded_for or forwarded_host or forwarded_proto or request_id)
                     and proxies.trusts(peer)):
        return Origin(False, peer, host, None, None, refused)
    if forwarded_host:
        host = _last(forwarded_host)
        if refused is None and not valid_host(host):
            refused = f"invalid X-Forwarded-Host header {shown(host)}"
    scheme = _last(forwarded_proto).lower() if forwarded_proto else None
    return Origin(
        True,
        _last(forwarded_for) if forwarded_for else peer or None,
        host,
        scheme if scheme in ("http", "https") else None,
        request_id if request_id is not None and _REQUEST_ID.fullmatch(request_id) else None,
        refused,
    )


def shown(text: str) -> str:
    """A client-sent value fit for a one-line reason: short, ASCII, bad bytes as ``\\xff``."""
    raw = text[:64].encode("utf-8", "surrogateescape")  # aiohttp decoded it so
    return repr(raw)[1:] + ("..." if len(text) > 64 else "")


def _last(header: str) -> str:
    return header.rpartition(",")[2].strip()
