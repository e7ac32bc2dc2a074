"""Where a request comes from (daemon/http/origin.py): read once, trusted proxies only."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from fnd.daemon.http.origin import Origin, TrustedProxies, read_origin

pytestmark = pytest.mark.unit

PROXY = "127.0.0.1"


class CountingProxies:
    """TrustedProxies that counts how often it is asked."""

    def __init__(self, *items: str) -> None:
        self.real = TrustedProxies.parse(items)
        self.networks, self.unix = self.real.networks, self.real.unix
        self.asked = 0

    def trusts(self, peer: str | None) -> bool:
        self.asked += 1
        return self.real.trusts(peer)


def origin(headers: dict[str, str], peer: str = PROXY, proxies: Any = None) -> Origin:
    request = make_mocked_request("GET", "/a", headers=CIMultiDict(headers))
    return read_origin(request.clone(remote=peer), proxies or TrustedProxies.parse([PROXY]))


FORWARDED = {"Host": "internal:3000", "X-Forwarded-For": "1.2.3.4, 5.6.7.8",
             "X-Forwarded-Host": "evil.example, example.com", "X-Forwarded-Proto": "https",
             "X-Request-Id": "nginx-1"}


def test_a_trusted_proxy_forwards_every_fact() -> None:
    assert origin(FORWARDED) == Origin(True, "5.6.7.8", "example.com", "https", "nginx-1", None)


def test_an_untrusted_peer_forwards_nothing() -> None:
    assert origin(FORWARDED, peer="192.0.2.1") == Origin(
        False, "192.0.2.1", "internal:3000", None, None, None)


def test_the_proxy_test_runs_once_and_only_when_something_is_forwarded() -> None:
    proxies = CountingProxies(PROXY)
    origin(FORWARDED, proxies=proxies)
    assert proxies.asked == 1
    assert not origin({"Host": "example.com"}, proxies=proxies).trusted
    assert proxies.asked == 1
    # no TCP peer can be trusted: nothing forwarded is even read
    untested = CountingProxies("unix")
    assert origin(FORWARDED, proxies=untested) == Origin(
        False, PROXY, "internal:3000", None, None, None)
    assert untested.asked == 0


def test_a_unix_socket_peer_is_trusted_when_unix_is() -> None:
    assert origin(FORWARDED, peer="", proxies=TrustedProxies.parse(["unix"])) == Origin(
        True, "5.6.7.8", "example.com", "https", "nginx-1", None)
    assert origin(FORWARDED, peer="", proxies=TrustedProxies.parse([PROXY])) == Origin(
        False, None, "internal:3000", None, None, None)
    assert origin({"Host": "h"}, peer="", proxies=TrustedProxies.parse(["unix"])) == Origin(
        True, None, "h", None, None, None)


def test_odd_forwarded_values_are_dropped_and_bad_hosts_refused() -> None:
    odd = origin({"X-Forwarded-Proto": "gopher", "X-Request-Id": "a b"})
    assert odd.scheme is None and odd.request_id is None and odd.trusted
    assert origin({"Host": "a b"}).refused == "invalid Host header 'a b'"
    assert origin({"X-Forwarded-Host": "x, a/b"}).refused == (
        "invalid X-Forwarded-Host header 'a/b'")
    # the Host's own problem is told first
    assert origin({"Host": "a b", "X-Forwarded-Host": "a/b"}).refused == (
        "invalid Host header 'a b'")
