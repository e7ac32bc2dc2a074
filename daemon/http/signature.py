"""X-Twilio-Signature checks for protected functions and assets (docs/differences.md#signatures).

The check itself is delegated to the twilio package's ``RequestValidator`` so that fnd
accepts exactly what Twilio's own helpers accept (HMAC-SHA1 with the AUTH_TOKEN, the URL with
and without its default port). This module only decides *which URL* Twilio signed:

1. ``public_url`` when configured: its scheme/host/base path + the request's raw path and
   query (as sent, percent-encoding untouched, since that is what Twilio signed);
2. else, when the peer is a trusted proxy, the scheme from ``X-Forwarded-Proto`` and the host
   from ``X-Forwarded-Host``, falling back to the request's scheme and ``Host``;
3. else the request's own scheme and ``Host``.

A forwarded header holding a comma-separated chain is read from its *last* element: the one
the nearest (trusted) proxy added; earlier elements came from the client. Configure
``public_url`` in production: without it, the host is whatever the client (or proxy) says.

JSON bodies: Twilio signs the URL only and puts the body's SHA-256 in the ``bodySHA256``
query parameter. A JSON body without ``bodySHA256`` is refused (the body would be unsigned).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from multidict import MultiDict
from twilio.request_validator import RequestValidator

if TYPE_CHECKING:
    from aiohttp.web import BaseRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FormParams = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]


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


def signed_url(
    *,
    raw_path_qs: str,
    scheme: str,
    host: str,
    forwarded_proto: str | None = None,
    forwarded_host: str | None = None,
    trusted: bool = False,
    public_url: str | None = None,
) -> str:
    """The URL Twilio signed for this request (see the module docstring for the order).

    ``raw_path_qs`` is the request target as received (aiohttp ``request.raw_path``);
    ``host`` the Host header (or the local address when absent).
    """
    path_qs = _origin_form(raw_path_qs)
    if public_url:
        return public_url.rstrip("/") + path_qs
    if trusted:
        proto = _last(forwarded_proto).lower()
        if proto in ("http", "https"):
            scheme = proto
        host = _last(forwarded_host) or host
    return f"{scheme}://{host}{path_qs}"


def url_for_request(
    request: BaseRequest, *, public_url: str | None, proxies: TrustedProxies
) -> str:
    """:func:`signed_url` for an aiohttp request."""
    headers = request.headers
    return signed_url(
        raw_path_qs=request.raw_path,
        scheme=request.scheme,
        host=request.host,
        forwarded_proto=headers.get("X-Forwarded-Proto"),
        forwarded_host=headers.get("X-Forwarded-Host"),
        trusted=proxies.trusts(request.remote),
        public_url=public_url,
    )


def check_signature(
    auth_token: str,
    url: str,
    form_params: FormParams,
    signature: str | None,
    *,
    json_body: bytes | None = None,
) -> bool:
    """Whether ``signature`` (the X-Twilio-Signature header) is valid for this request.

    ``form_params``: the urlencoded body fields (repeated keys as lists or repeated pairs);
    empty for GET and for bodies that are neither form nor JSON. ``json_body``: the raw body
    when it is JSON, which switches to Twilio's ``bodySHA256`` scheme.
    """
    if not signature or not auth_token:
        return False
    validator = RequestValidator(auth_token)
    if json_body is not None:
        if "bodySHA256" not in parse_qs(urlsplit(url).query):
            return False  # nothing would tie the body to the signature
        try:
            text = json_body.decode("utf-8")
        except UnicodeDecodeError:
            return False
        # A str body is what makes RequestValidator compare bodySHA256 with the body's hash.
        return bool(validator.validate(url, text, signature))
    return bool(validator.validate(url, _multidict(form_params), signature))


def _multidict(params: FormParams) -> MultiDict[str]:
    # RequestValidator reads repeated keys through getall(); a plain dict holding lists
    # would make it hash a list.
    out: MultiDict[str] = MultiDict()
    if isinstance(params, Mapping):
        for key, value in params.items():
            if isinstance(value, str):
                out.add(key, value)
            else:
                for item in value:
                    out.add(key, item)
    else:
        for key, item in params:
            out.add(key, item)
    return out


def _last(header: str | None) -> str:
    if not header:
        return ""
    return header.rpartition(",")[2].strip()


def _origin_form(target: str) -> str:
    """Path and query of a request target; an absolute-form target loses scheme and host."""
    if target.startswith("/"):
        return target
    parts = urlsplit(target)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path
