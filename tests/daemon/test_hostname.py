"""Which Host values reach context.DOMAIN_NAME."""

from __future__ import annotations

import pytest

from fnd.daemon.http.hostname import url_host, valid_host

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("host", [
    "example.com", "example.com:8443", "a", "localhost:3000", "my-host.example.co.uk.",
    "10.0.0.1", "10.0.0.1:80", "[::1]", "[::1]:3000", "[2001:db8::7]", "fnd_app:3000",
    "x" * 63 + ".example.com",
])
def test_valid(host: str) -> None:
    assert valid_host(host)


@pytest.mark.parametrize("host", [
    "", "\udcff", "caf\u00e9.example", "evil.com/path", "user@evil.com", "a b", "-a.com",
    "a-.com", "a..com", ".a.com", "a.com:", "a.com:123456", "[::1", "[zz::1]", "[1.2.3.4]",
    "x" * 64 + ".example.com", ("a." * 130) + "com", "a.com\r\nX: y", "a.com%00",
])
def test_invalid(host: str) -> None:
    assert not valid_host(host)


def test_url_host() -> None:
    assert url_host("https://fn.example.com/base") == "fn.example.com"
    assert url_host("https://user:pw@fn.example.com:8443") == "fn.example.com:8443"
    assert url_host("https://[::1]:3000/") == "[::1]:3000"
    assert url_host("https://") == "" and url_host("https://bad host/") == ""
