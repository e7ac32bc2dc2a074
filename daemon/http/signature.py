"""X-Twilio-Signature checks for protected functions and assets (docs/differences.md#signatures).

The check itself is delegated to the twilio package's ``RequestValidator`` so that fnd
accepts exactly what Twilio's own helpers accept (HMAC-SHA1 with the AUTH_TOKEN, the URL with
and without its default port). This module only decides *which URL* Twilio signed:

1. ``public_url`` when configured: its scheme/host/base path + the request's raw path and
   query (as sent, percent-encoding untouched, since that is what Twilio signed);
2. else, when the peer is a trusted proxy, the scheme from ``X-Forwarded-Proto`` and the host
   from ``X-Forwarded-Host``, falling back to the request's scheme and ``Host``;
3. else the request's own scheme and ``Host``.

Which of these the request carries is read once, by ``fnd.daemon.http.origin`` (the last
element of a forwarded chain: the one the nearest trusted proxy added). Configure
``public_url`` in production: without it, the host is whatever the client (or proxy) says.

JSON bodies: Twilio signs the URL only and puts the body's SHA-256 in the ``bodySHA256``
query parameter. A JSON body without ``bodySHA256`` is refused (the body would be unsigned).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from multidict import MultiDict
from twilio.request_validator import RequestValidator

if TYPE_CHECKING:
    from aiohttp.web import BaseRequest

    from fnd.daemon.http.origin import Origin

FormParams = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]


def signed_url(*, raw_path_qs: str, scheme: str, host: str, public_url: str | None = None) -> str:
    """The URL Twilio signed for this request (see the module docstring for the order).

    ``raw_path_qs`` is the request target as received (aiohttp ``request.raw_path``);
    ``scheme`` and ``host`` those the client used, as the request's origin tells them.
    """
    path_qs = _origin_form(raw_path_qs)
    if public_url:
        return public_url.rstrip("/") + path_qs
    return f"{scheme}://{host}{path_qs}"


def url_for_request(request: BaseRequest, origin: Origin, *, public_url: str | None) -> str:
    """:func:`signed_url` for an aiohttp request and its :class:`Origin`.

    The connection's own scheme and host (``request.host`` falls back to the local address
    when there is no Host) are read only when no trusted proxy forwarded them.
    """
    return signed_url(
        raw_path_qs=request.raw_path,
        scheme=origin.scheme or request.scheme,
        host=origin.host or request.host,
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


def _origin_form(target: str) -> str:
    """Path and query of a request target; an absolute-form target loses scheme and host."""
    if target.startswith("/"):
        return target
    parts = urlsplit(target)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path
