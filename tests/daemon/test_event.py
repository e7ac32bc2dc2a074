"""The event dict, from plain inputs (no server): docs/handlers.md#event."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy
from yarl import URL

from fnd.daemon.config import BY_NAME
from fnd.daemon.http.event import (
    MAX_JSON_DEPTH,
    NO_BODY,
    EventError,
    ParsedBody,
    body_kind,
    build_event,
    check_request_headers,
    parse_body,
)

pytestmark = pytest.mark.unit

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def query(qs: str) -> MultiDictProxy[str]:
    """The query exactly as aiohttp hands it over (yarl parses request.rel_url)."""
    return URL("/x?" + qs if qs else "/x", encoded=True).query


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def event(qs: str = "", content_type: str = "", body: bytes = b"",
          hdrs: Any = ()) -> dict[str, Any]:
    return build_event(query(qs), content_type, body, headers(*hdrs))


def fields(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ev.items() if k != "request"}


def reason(qs: str = "", content_type: str = "", body: bytes = b"") -> tuple[int, str]:
    with pytest.raises(EventError) as info:
        event(qs, content_type, body)
    assert str(info.value) == info.value.reason
    assert "\n" not in info.value.reason  # one line
    return info.value.status, info.value.reason


# --- collapsing (3.1) ----------------------------------------------------------------------


def test_get_without_anything() -> None:
    assert event() == {"request": {"headers": {}, "cookies": {}}}


def test_query() -> None:
    assert fields(event("a=1&b=two%20words&c=x+y&empty=&bare")) == {
        "a": "1", "b": "two words", "c": "x y", "empty": "", "bare": "",
    }


def test_repeated_keys_become_lists_in_order() -> None:
    assert fields(event("a=3&a=1&b=x&a=2")) == {"a": ["3", "1", "2"], "b": "x"}


def test_keys_are_literal() -> None:
    assert fields(event("a[b]=1&a[b]=2&c.d=3&e[]=4")) == {
        "a[b]": ["1", "2"], "c.d": "3", "e[]": "4",
    }


def test_form_body() -> None:
    body = b"From=%2B15551234567&Body=hello+world&Media=1&Media=2&x[y]=z&blank="
    assert fields(event(content_type=FORM, body=body)) == {
        "From": "+15551234567", "Body": "hello world", "Media": ["1", "2"], "x[y]": "z",
        "blank": "",
    }


def test_form_edge_pairs() -> None:
    body = b"a=1&&b=x%3Dy=z&c&%41%42=%43&d=%zz&e=%"
    assert fields(event(content_type=FORM, body=body)) == {
        "a": "1", "b": "x=y=z", "c": "", "AB": "C", "d": "%zz", "e": "%",
    }


def test_form_is_utf8() -> None:
    body = "name=é&enc=%C3%A9".encode()
    assert fields(event(content_type=FORM + "; charset=ISO-8859-1", body=body)) == {
        "name": "é", "enc": "é",
    }


def test_body_wins_over_query_and_is_not_merged() -> None:
    ev = event("a=q&a=q2&b=q&only=q", FORM, b"a=b&b=b1&b=b2")
    assert fields(ev) == {"a": "b", "b": ["b1", "b2"], "only": "q"}


def test_json_body_keeps_types() -> None:
    doc = {"s": "x", "i": 1, "f": 1.5, "t": True, "n": None, "l": [1, "a"], "o": {"k": [{}]}}
    assert fields(event(content_type=JSON, body=json.dumps(doc).encode())) == doc


def test_json_body_wins_over_query() -> None:
    ev = event("a=1&a=2&b=q", JSON, b'{"a": [3], "c": false}')
    assert fields(ev) == {"a": [3], "b": "q", "c": False}


def test_json_big_integers_become_floats() -> None:
    body = (b'{"ok": 18446744073709551615, "big": 18446744073709551616,'
            b' "neg": -9223372036854775809, "min": -9223372036854775808}')
    ev = event(content_type=JSON, body=body)
    assert ev["ok"] == 2**64 - 1 and type(ev["ok"]) is int
    assert ev["min"] == -(2**63) and type(ev["min"]) is int
    assert type(ev["big"]) is float and type(ev["neg"]) is float


def test_json_utf16_and_bom() -> None:
    assert fields(event(content_type=JSON, body='{"a": "é"}'.encode("utf-16"))) == {"a": "é"}
    assert fields(event(content_type=JSON, body=b'\xef\xbb\xbf{"a": 1}')) == {"a": 1}


@pytest.mark.parametrize("content_type", [
    "application/json", "Application/JSON", "application/json; charset=utf-8",
    " application/json ;charset=UTF-8", "application/vnd.api+json",
    "application/merge-patch+json; charset=utf-8",
])
def test_json_content_types(content_type: str) -> None:
    assert body_kind(content_type) == "json"
    assert fields(event(content_type=content_type, body=b'{"a": 1}')) == {"a": 1}


@pytest.mark.parametrize("content_type", [
    FORM, "APPLICATION/X-WWW-FORM-URLENCODED", FORM + "; charset=utf-8",
])
def test_form_content_types(content_type: str) -> None:
    assert body_kind(content_type) == "form"
    assert fields(event(content_type=content_type, body=b"a=1")) == {"a": "1"}


@pytest.mark.parametrize("content_type", [
    "", "text/plain", "text/json", "multipart/form-data; boundary=x", "application/xml",
    "application/jsonx", "json", "application/octet-stream", "text/x+json",
])
def test_other_content_types_ignore_body_keep_query(content_type: str) -> None:
    assert body_kind(content_type) == "none"
    # not even parsed: a body that would be malformed as JSON or form is fine
    assert fields(event("q=1", content_type, b"{not json \xff=%ff")) == {"q": "1"}


def test_empty_body_is_no_body() -> None:
    assert fields(event("q=1", JSON, b"")) == {"q": "1"}
    assert fields(event("q=1", FORM, b"")) == {"q": "1"}


# --- 400s (3.3) ----------------------------------------------------------------------------


def test_malformed_json() -> None:
    assert reason(content_type=JSON, body=b"{") == (
        400, "malformed JSON body: Expecting property name enclosed in double quotes: "
             "line 1 column 2 (char 1)")
    assert reason(content_type=JSON, body=b'{"a": 1}\n{"b": 2}') == (
        400, "malformed JSON body: Extra data: line 2 column 1 (char 9)")
    assert reason(content_type=JSON, body=b"  ") == (
        400, "malformed JSON body: Expecting value: line 1 column 3 (char 2)")


def test_json_not_an_object() -> None:
    for body, kind in ((b"[1]", "an array"), (b'"s"', "a string"), (b"1", "a number"),
                       (b"1.5", "a number"), (b"true", "a boolean"), (b"null", "null")):
        assert reason(content_type=JSON, body=body) == (
            400, f"JSON body must be an object, got {kind}")


def test_json_constants_refused() -> None:
    for const in ("NaN", "Infinity", "-Infinity"):
        assert reason(content_type=JSON, body=b'{"a": %s}' % const.encode()) == (
            400, f"malformed JSON body: {const} is not valid JSON")


def test_json_invalid_utf8() -> None:
    assert reason(content_type=JSON, body=b'{"a": "\xff"}') == (
        400, "malformed JSON body: not valid UTF-8")


def test_json_lone_surrogate_refused_at_any_depth() -> None:
    message = "JSON body holds a lone surrogate (\\ud800), which is not valid Unicode"
    for body in (b'{"x": "\\ud800"}', b'{"\\ud800": 1}', b'{"a": [{"b": ["ok", "x\\uD800y"]}]}',
                 b'{"a": {"\\ud800k": null}}'):
        assert reason(content_type=JSON, body=body) == (400, message), body
    assert reason(content_type=JSON, body=b'{"x": "\\udc00 low first \\ud83d"}')[1] == (
        "JSON body holds a lone surrogate (\\udc00), which is not valid Unicode")


def test_json_surrogate_pairs_and_lookalikes_pass() -> None:
    assert fields(event(content_type=JSON, body=b'{"e": "\\ud83d\\ude00"}')) == {"e": "\U0001f600"}
    # an escaped backslash followed by "ud800" is six plain characters
    assert fields(event(content_type=JSON, body=b'{"e": "\\\\ud800"}')) == {"e": "\\ud800"}


def test_json_encoded_surrogates_are_not_valid_text() -> None:
    # CESU-style UTF-8 bytes of U+D800: json.loads(bytes) alone would accept them
    assert reason(content_type=JSON, body=b'{"x": "\xed\xa0\x80"}') == (
        400, "malformed JSON body: not valid UTF-8")
    utf16 = '{"x": "'.encode("utf-16-le") + b"\x00\xd8" + '"}'.encode("utf-16-le")
    assert reason(content_type=JSON, body=utf16) == (
        400, "malformed JSON body: not valid UTF-16-LE")


def test_json_too_deep() -> None:
    ok = b'{"a": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
    assert "a" in event(content_type=JSON, body=ok)
    deep = b'{"a": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}"
    assert reason(content_type=JSON, body=deep) == (
        400, f"malformed JSON body: nested deeper than {MAX_JSON_DEPTH}")
    hostile = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert reason(content_type=JSON, body=hostile) == (
        400, "malformed JSON body: nested too deeply")


def test_form_invalid_utf8_is_lenient_like_the_query() -> None:
    assert fields(event(content_type=FORM, body=b"a=\xff")) == {"a": "\ufffd"}
    assert fields(event(content_type=FORM, body=b"a=%ff&b=x%e2%82y")) == {
        "a": "\ufffd", "b": "x\ufffdy"}
    assert fields(event(content_type=FORM, body=b"%C3=1")) == {"\ufffd": "1"}


# --- event.request (3.2) -------------------------------------------------------------------


def test_headers_lowercased_repeated_as_lists() -> None:
    ev = event(hdrs=[("User-Agent", "TwilioProxy/1.1"), ("X-Twilio-Signature", "sig"),
                     ("Accept", "a"), ("accept", "b"), ("ACCEPT", "c")])
    assert ev["request"]["headers"] == {
        "user-agent": "TwilioProxy/1.1", "x-twilio-signature": "sig", "accept": ["a", "b", "c"],
    }


def test_excluded_headers() -> None:
    excluded = ["Host", "Connection", "Proxy-Authorization", "Proxy-Authenticate",
                "Transfer-Encoding", "TE", "Trailer", "Upgrade", "Expect", "Via", "X-Real-IP",
                "X-Forwarded-For", "X-Forwarded-Proto", "x-forwarded-host", "X-FORWARDED-PORT",
                "Referer", "Proxy-Connection", "I-Twilio-Idempotency-Token", "I-T-Trace",
                "OT-Baggage", "X-Amzn-Trace-Id", "X-Amz-Date", "X-Accel-Redirect"]
    kept = [("X-Forwarded", "kept"), ("X-Real-IPs", "kept"), ("X-Twilio-Signature", "sig"),
            ("Twilio-Ot", "kept"), ("X-Accel", "kept")]
    ev = event(hdrs=[(name, "v") for name in excluded] + kept)
    assert ev["request"]["headers"] == {name.lower(): value for name, value in kept}


def test_plain_mapping_and_pair_list_headers() -> None:
    assert build_event(query(""), "", b"", {"A": "1"})["request"]["headers"] == {"a": "1"}
    pairs = [("A", "1"), ("a", "2")]
    assert build_event(query(""), "", b"", pairs)["request"]["headers"] == {"a": ["1", "2"]}


def test_undecodable_header_value_becomes_text() -> None:
    raw = b"caf\xe9 \xc3\xa9".decode("utf-8", "surrogateescape")  # as aiohttp decodes it
    ev = event(hdrs=[("X-Name", raw), ("Cookie", "n=" + raw)])
    assert ev["request"]["headers"]["x-name"] == "caf\ufffd é"
    assert ev["request"]["cookies"] == {"n": "caf\ufffd é"}
    json.dumps(ev).encode("utf-8")  # serialisable as plain text


def test_undecodable_header_name_becomes_text() -> None:
    name = b"X-\xff".decode("utf-8", "surrogateescape")  # aiohttp's pure-Python parser
    ev = event(hdrs=[(name, "v")])
    assert ev["request"]["headers"] == {"x-\ufffd": "v"}
    json.dumps(ev, ensure_ascii=False).encode("utf-8")  # plain text all through


def test_cookies() -> None:
    ev = event(hdrs=[("Cookie", 'a=1; b=hello%20world; c="quoted%21"; a=2; flag; =x; d=;'
                                " e = spaced ; f=%E0%A4%A; g=1+2; h=x=y")])
    assert ev["request"]["cookies"] == {
        "a": "1", "b": "hello world", "c": "quoted!", "d": "", "e": "spaced",
        "f": "%E0%A4%A", "g": "1+2", "h": "x=y",
    }
    assert ev["request"]["headers"]["cookie"].startswith("a=1;")  # the header stays too


def test_several_cookie_headers_first_wins() -> None:
    ev = event(hdrs=[("Cookie", "a=1; b=2"), ("cookie", "a=3; c=4")])
    assert ev["request"]["cookies"] == {"a": "1", "b": "2", "c": "4"}
    assert ev["request"]["headers"]["cookie"] == ["a=1; b=2", "a=3; c=4"]


def test_request_key_replaces_request() -> None:
    hdrs = [("X-A", "1")]
    assert event("request=q", hdrs=hdrs)["request"] == "q"
    assert event("request=q", FORM, b"request=f", hdrs)["request"] == "f"
    assert event("", JSON, b'{"request": {"x": 1}}', hdrs)["request"] == {"x": 1}


# --- parsed body reuse ---------------------------------------------------------------------


def test_parse_body_and_reuse() -> None:
    parsed = parse_body(FORM, b"a=1&a=2&b=3")
    assert parsed == ParsedBody("form", [("a", "1"), ("a", "2"), ("b", "3")], None)
    # the pre-parsed body is used; the raw body is not looked at again
    assert fields(build_event(query(""), FORM, b"ignored", headers(), parsed=parsed)) == {
        "a": ["1", "2"], "b": "3",
    }
    assert parse_body(JSON, b'{"a": 1}') == ParsedBody("json", [], {"a": 1})
    assert parse_body("text/plain", b"x") is NO_BODY
    assert parse_body(JSON, b"") is NO_BODY


def test_query_as_plain_multidict_or_pairs() -> None:
    md = MultiDict([("a", "1"), ("a", "2")])
    assert fields(build_event(md, "", b"", {})) == {"a": ["1", "2"]}
    assert fields(build_event([("a", "1")], "", b"", {})) == {"a": "1"}


def test_inputs_not_mutated() -> None:
    md = MultiDict([("a", "1"), ("a", "2")])
    build_event(md, FORM, b"a=3", {})
    assert list(md.items()) == [("a", "1"), ("a", "2")]


# --- 431 (3.3) -----------------------------------------------------------------------------

# The limits of a default configuration (15 KiB and 90 fields).
DEFAULT_LIMITS = {"max_bytes": BY_NAME["max_header_bytes"].default,
                  "max_fields": BY_NAME["max_header_count"].default}


def test_header_limits_ok() -> None:
    check_request_headers([(b"Host", b"x")] * 90, **DEFAULT_LIMITS)
    value = b"v" * (15 * 1024 - 4 - 1 - 4)  # name 1 + value + 4 = exactly the limit
    check_request_headers([(b"x", value)], **DEFAULT_LIMITS)


def test_too_many_header_fields() -> None:
    with pytest.raises(EventError) as info:
        check_request_headers([(b"X-A", b"1")] * 91, **DEFAULT_LIMITS)
    assert (info.value.status, info.value.reason) == (
        431, "too many request header fields (91, limit 90)")


def test_headers_too_large() -> None:
    with pytest.raises(EventError) as info:
        check_request_headers([(b"x", b"v" * (15 * 1024 - 4))], **DEFAULT_LIMITS)
    assert (info.value.status, info.value.reason) == (
        431, "request headers too large (15361 bytes, limit 15360)")


def test_header_limits_are_parameters() -> None:
    check_request_headers([("a", "b")] * 3, max_bytes=18, max_fields=3)
    with pytest.raises(EventError, match=r"\(4, limit 3\)"):
        check_request_headers([("a", "b")] * 4, max_bytes=100, max_fields=3)
    with pytest.raises(EventError, match=r"\(24 bytes, limit 23\)"):
        check_request_headers([("a", "b")] * 4, max_bytes=23, max_fields=10)


# --- cost ----------------------------------------------------------------------------------


def test_common_get_is_cheap() -> None:
    q = query("")
    h = headers(("Host", "example.com"), ("User-Agent", "curl/8"), ("Accept", "*/*"))
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        build_event(q, "", b"", h)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 20e-6, f"{per_call * 1e6:.1f} µs per GET event"
