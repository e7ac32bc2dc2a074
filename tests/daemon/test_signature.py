"""Which URL Twilio signed, and the X-Twilio-Signature check itself
(docs/differences.md#signatures).

Signatures are computed exactly as Twilio does, with the twilio package's own
``RequestValidator.compute_signature``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, MultiDict
from twilio.request_validator import RequestValidator

from fnd.daemon.http.origin import TrustedProxies, read_origin
from fnd.daemon.http.signature import check_signature, signed_url, url_for_request

pytestmark = pytest.mark.unit

TOKEN = "12345678901234567890123456789012"
OTHER_TOKEN = "abcdefabcdefabcdefabcdefabcdefab"
URL = "https://example.com/sms?foo=bar"
PARAMS = {"From": "+15551234567", "Body": "hello world", "To": "+15557654321"}


def sign(url: str, params: Any = None, token: str = TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params or {}))


# --- check_signature -----------------------------------------------------------------------


def test_valid_form_signature() -> None:
    assert check_signature(TOKEN, URL, PARAMS, sign(URL, PARAMS))


def test_valid_get_signature_without_params() -> None:
    url = "https://example.com/voice?CallSid=CA1&From=%2B1555"
    assert check_signature(TOKEN, url, {}, sign(url))


def test_tampered_param() -> None:
    signature = sign(URL, PARAMS)
    assert not check_signature(TOKEN, URL, {**PARAMS, "Body": "hello world!"}, signature)
    assert not check_signature(TOKEN, URL, {**PARAMS, "Extra": "x"}, signature)
    assert not check_signature(TOKEN, URL, {k: v for k, v in PARAMS.items() if k != "To"},
                               signature)


def test_tampered_query() -> None:
    assert not check_signature(TOKEN, URL.replace("bar", "baz"), PARAMS, sign(URL, PARAMS))


def test_wrong_token() -> None:
    assert not check_signature(OTHER_TOKEN, URL, PARAMS, sign(URL, PARAMS))
    assert not check_signature(TOKEN, URL, PARAMS, sign(URL, PARAMS, OTHER_TOKEN))


def test_replay_to_another_url() -> None:
    signature = sign(URL, PARAMS)
    for other in ("https://example.com/other?foo=bar", "https://evil.example/sms?foo=bar",
                  "http://example.com/sms?foo=bar", "https://example.com/sms"):
        assert not check_signature(TOKEN, other, PARAMS, signature), other


def test_missing_or_empty_signature_or_token() -> None:
    assert not check_signature(TOKEN, URL, PARAMS, None)
    assert not check_signature(TOKEN, URL, PARAMS, "")
    assert not check_signature("", URL, PARAMS, sign(URL, PARAMS, ""))
    assert not check_signature(TOKEN, URL, PARAMS, "garbage")


@pytest.mark.parametrize(("signed", "received"), [
    ("https://example.com/sms?x=1", "https://example.com:443/sms?x=1"),
    ("https://example.com:443/sms?x=1", "https://example.com/sms?x=1"),
    ("http://example.com/sms", "http://example.com:80/sms"),
    ("http://example.com:80/sms", "http://example.com/sms"),
    ("https://example.com:8443/sms", "https://example.com:8443/sms"),
])
def test_port_with_and_without(signed: str, received: str) -> None:
    assert check_signature(TOKEN, received, PARAMS, sign(signed, PARAMS))


def test_non_default_port_must_match() -> None:
    signature = sign("https://example.com:8443/sms", PARAMS)
    assert not check_signature(TOKEN, "https://example.com/sms", PARAMS, signature)
    assert not check_signature(TOKEN, "https://example.com:9443/sms", PARAMS, signature)


def test_repeated_params_every_shape() -> None:
    pairs = [("MediaUrl", "https://a"), ("Body", "x"), ("MediaUrl", "https://b")]
    signature = sign(URL, MultiDict(pairs))
    assert check_signature(TOKEN, URL, pairs, signature)  # pairs, as event.parse_body gives
    assert check_signature(TOKEN, URL, MultiDict(pairs), signature)
    as_lists: Mapping[str, str | list[str]] = {"MediaUrl": ["https://a", "https://b"],
                                               "Body": "x"}
    assert check_signature(TOKEN, URL, as_lists, signature)
    assert not check_signature(TOKEN, URL, [("MediaUrl", "https://a"), ("Body", "x")],
                               signature)


def json_url(body: bytes, base: str = "https://example.com/hook?x=1") -> str:
    return f"{base}&bodySHA256={hashlib.sha256(body).hexdigest()}"


def test_json_body_sha256() -> None:
    body = b'{"event": "x", "n": 1}'
    url = json_url(body)
    signature = sign(url)
    assert check_signature(TOKEN, url, {}, signature, json_body=body)


def test_json_body_tampered() -> None:
    body = b'{"event": "x", "n": 1}'
    url = json_url(body)
    assert not check_signature(TOKEN, url, {}, sign(url), json_body=b'{"event": "x", "n": 2}')


def test_json_body_hash_tampered_in_url() -> None:
    body = b'{"n": 1}'
    url = json_url(body)
    other = b'{"n": 2}'
    forged = json_url(other)  # attacker recomputes the hash but cannot re-sign
    assert not check_signature(TOKEN, forged, {}, sign(url), json_body=other)


def test_json_body_with_port_variants() -> None:
    body = b'{"a": "\xc3\xa9"}'
    signed = json_url(body, "https://example.com:443/hook?x=1")
    received = json_url(body, "https://example.com/hook?x=1")
    assert check_signature(TOKEN, received, {}, sign(signed), json_body=body)


def test_json_body_without_body_sha256_is_refused() -> None:
    url = "https://example.com/hook"
    assert not check_signature(TOKEN, url, {}, sign(url), json_body=b'{"a": 1}')


def test_json_body_not_utf8_is_refused() -> None:
    body = '{"a": 1}'.encode("utf-16")
    url = json_url(body)
    assert not check_signature(TOKEN, url, {}, sign(url), json_body=body)


def test_form_post_signature_does_not_cover_unsigned_json_scheme() -> None:
    # a signed form request: posting its URL with a JSON body instead is refused
    assert not check_signature(TOKEN, URL, {}, sign(URL), json_body=b"{}")


# --- signed_url ----------------------------------------------------------------------------


def test_url_from_request_itself() -> None:
    assert signed_url(raw_path_qs="/sms?a=%20b", scheme="http", host="localhost:3000") == (
        "http://localhost:3000/sms?a=%20b")


def via(peer: str | None, host: str, *, proto: str | None = None,
        forwarded_host: str | None = None, target: str = "/sms",
        public_url: str | None = None) -> str:
    """The signed URL of a request from ``peer`` (a trusted proxy: 127.0.0.1)."""
    headers = {"Host": host}
    if proto is not None:
        headers["X-Forwarded-Proto"] = proto
    if forwarded_host is not None:
        headers["X-Forwarded-Host"] = forwarded_host
    request = mocked(target, headers, peer)
    origin = read_origin(request, TrustedProxies.parse(["127.0.0.1"]))
    return url_for_request(request, origin, public_url=public_url)


def test_forwarded_headers_ignored_from_untrusted_peer() -> None:
    assert via("192.0.2.1", "internal:3000", proto="https",
               forwarded_host="example.com") == "http://internal:3000/sms"


def test_forwarded_headers_from_trusted_proxy() -> None:
    assert via("127.0.0.1", "internal:3000", proto="https", forwarded_host="example.com",
               target="/sms?x=1") == "https://example.com/sms?x=1"


def test_trusted_proxy_partial_headers() -> None:
    # proto only: host from Host (nginx: proxy_set_header Host $host)
    assert via("127.0.0.1", "example.com", proto="HTTPS", target="/a") == (
        "https://example.com/a")
    assert via("127.0.0.1", "internal", forwarded_host="example.com:8443", target="/a") == (
        "http://example.com:8443/a")
    # a proto that is not http(s) is ignored
    assert via("127.0.0.1", "h", proto="gopher", target="/a") == "http://h/a"


def test_forwarded_chain_uses_nearest_proxy() -> None:
    assert via("127.0.0.1", "h", proto="http, https", forwarded_host="evil.example, example.com",
               target="/a") == "https://example.com/a"


def test_public_url_wins() -> None:
    for public in ("https://fn.example.com", "https://fn.example.com/"):
        assert via("127.0.0.1", "internal", proto="http", forwarded_host="other",
                   target="/sms?x=1", public_url=public) == "https://fn.example.com/sms?x=1"
    assert signed_url(raw_path_qs="/sms", scheme="http", host="h",
                      public_url="https://example.com/base/") == "https://example.com/base/sms"


def test_absolute_form_request_target() -> None:
    assert signed_url(raw_path_qs="http://evil.example/sms?x=1", scheme="http",
                      host="example.com") == "http://example.com/sms?x=1"
    assert signed_url(raw_path_qs="http://evil.example", scheme="http",
                      host="example.com") == "http://example.com/"


def test_end_to_end_behind_proxy() -> None:
    public = "https://example.com/sms?foo=bar"
    signature = sign(public, PARAMS)
    url = via("127.0.0.1", "127.0.0.1:3000", proto="https", forwarded_host="example.com",
              target="/sms?foo=bar")
    assert check_signature(TOKEN, url, PARAMS, signature)
    untrusted = via("192.0.2.1", "127.0.0.1:3000", proto="https", forwarded_host="example.com",
                    target="/sms?foo=bar")
    assert not check_signature(TOKEN, untrusted, PARAMS, signature)


# --- TrustedProxies and the aiohttp adapter ------------------------------------------------


def test_trusted_proxies() -> None:
    proxies = TrustedProxies.parse(["unix", "127.0.0.1", " 10.0.0.0/8 ", "::1", "fd00::/8"])
    assert proxies.trusts(None) and proxies.trusts("")
    for peer in ("127.0.0.1", "10.1.2.3", "::1", "fd12::1", "fd00::1%eth0"):
        assert proxies.trusts(peer), peer
    for peer in ("127.0.0.2", "192.168.1.1", "2001:db8::1", "not-an-ip"):
        assert not proxies.trusts(peer), peer
    none = TrustedProxies.parse([])
    assert not none.trusts(None) and not none.trusts("127.0.0.1")
    assert not TrustedProxies.parse(["127.0.0.1"]).trusts("")


def test_trusted_proxies_bad_entry() -> None:
    with pytest.raises(ValueError, match="'localhost' is not 'unix', an IP address or a network"):
        TrustedProxies.parse(["localhost"])


def mocked(path: str, headers: dict[str, str], peer: str | None) -> Any:
    request = make_mocked_request("POST", path, headers=CIMultiDict(headers))
    return request.clone(remote=peer) if peer is not None else request


def test_url_for_request() -> None:
    hdrs = {"Host": "127.0.0.1:3000", "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "example.com"}
    proxies = TrustedProxies.parse(["127.0.0.1"])

    def url(request: Any, public_url: str | None = None) -> str:
        return url_for_request(request, read_origin(request, proxies), public_url=public_url)

    assert url(mocked("/sms?a=%2B1", hdrs, "127.0.0.1")) == "https://example.com/sms?a=%2B1"
    assert url(mocked("/sms?a=%2B1", hdrs, "192.0.2.1")) == "http://127.0.0.1:3000/sms?a=%2B1"
    assert url(mocked("/sms", hdrs, "192.0.2.1"), "https://pub.example") == (
        "https://pub.example/sms")
