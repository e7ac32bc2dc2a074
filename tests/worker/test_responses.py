"""Every kind of response, as exact (status, headers, body): docs/handlers.md#what-a-value-becomes
and docs/handlers.md#twilioresponse."""

from __future__ import annotations

from typing import Any

import pytest

from tests.worker.harness import Worker

TEXT = ("Content-Type", "text/plain; charset=utf-8")
JSON = ("Content-Type", "application/json")
XML = ("Content-Type", "text/xml; charset=utf-8")
HTML = ("Content-Type", "text/html; charset=utf-8")
BINARY = ("Content-Type", "application/octet-stream")
XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>'


def reply(worker: Worker, function: str, event: dict[str, Any]) -> tuple[int, list[Any], bytes]:
    outcome = worker.call(function, event)
    assert outcome.done["clean"] is True
    return outcome.status, outcome.headers, outcome.body


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hello", (200, [TEXT], b"hello")),
        ("", (200, [TEXT], b"")),
        ({"a": 1, "b": [1, 2]}, (200, [JSON], b'{"a":1,"b":[1,2]}')),
        ([1, "x", None], (200, [JSON], b'[1,"x",null]')),
        (True, (200, [JSON], b"true")),
        (42, (200, [JSON], b"42")),
        (1.5, (200, [JSON], b"1.5")),
        (b"\x00\xff", (200, [BINARY], b"\x00\xff")),
        (None, (200, [], b"")),
    ],
)
def test_plain_values(worker: Worker, value: Any, expected: tuple[int, list[Any], bytes]) -> None:
    assert reply(worker, "respond_value", {"value": value}) == expected


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("no_argument", (200, [], b"")),
        ("none", (200, [], b"")),
        ("bytearray", (200, [BINARY], b"\x00ab")),
        ("voice", (200, [XML], f"{XML_DECL}<Response><Say>Hi</Say></Response>".encode())),
        (
            "messaging",
            (200, [XML], f"{XML_DECL}<Response><Message>Yo</Message></Response>".encode()),
        ),
        ("fax", (200, [XML], f"{XML_DECL}<Response />".encode())),
        ("unicode", (200, [JSON], '{"name":"Zoë"}'.encode())),
    ],
)
def test_other_values(worker: Worker, kind: str, expected: tuple[int, list[Any], bytes]) -> None:
    assert reply(worker, "respond_kind", {"kind": kind}) == expected


@pytest.mark.parametrize(
    ("kind", "named"),
    [
        ("object", "Thing"),
        ("tuple", "tuple"),
        ("nested_datetime", "datetime"),
        ("nan", "not JSON compliant"),
    ],
)
def test_not_serialisable_is_500_naming_the_type(worker: Worker, kind: str, named: str) -> None:
    outcome = worker.call("respond_kind", {"kind": kind})
    assert outcome.status == 500
    assert outcome.headers == [TEXT]
    assert named in outcome.text
    assert named in outcome.result["error"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("default", (200, [], b"")),
        ("html", (200, [HTML], b"<p>hi</p>")),
        ("json_string", (200, [("Content-Type", "application/json")], b'{"a": 1}')),
        ("dict", (200, [JSON], b'{"a":[1,2]}')),
        ("dict_custom_type", (200, [("Content-Type", "application/vnd.x+json")], b'{"a":1}')),
        ("bytes", (200, [BINARY], b"\x00\x01")),
        ("bytes_typed", (200, [("Content-Type", "image/gif")], b"GIF89a")),
        ("twiml", (200, [XML], f"{XML_DECL}<Response><Message>Yo</Message></Response>".encode())),
        ("status", (201, [HTML], b"made")),
        ("constructor", (202, [("X-Job", "7"), HTML], b"queued")),
        ("no_content", (204, [], b"")),
        ("not_modified", (304, [], b"")),
        ("append_twice", (200, [("X-Multi", "a"), ("X-Multi", "b")], b"")),
        ("list_value", (200, [("Cache-Control", "no-cache"), ("Cache-Control", "private")], b"")),
        (
            "set_headers",
            (
                200,
                [
                    ("X-New", "2"),
                    ("Set-Cookie", "a=1; HttpOnly; Secure"),
                    ("Set-Cookie", "b=2; HttpOnly; Secure"),
                ],
                b"",
            ),
        ),
        ("snake_set_headers", (200, [("X-Only", "this")], b"")),
        ("framing_headers", (200, [HTML], b"ok")),
    ],
)
def test_twilio_response(worker: Worker, case: str, expected: tuple[int, list[Any], bytes]) -> None:
    assert reply(worker, "response_build", {"case": case}) == expected


def test_snake_case_methods_behave_as_camel_case(worker: Worker) -> None:
    assert reply(worker, "response_build", {"case": "snake_case"}) == (
        201,
        [
            ("X-A", "1"),
            ("Set-Cookie", "s=1; HttpOnly; Secure"),
            ("Set-Cookie", "gone=; Max-Age=0; HttpOnly; Secure"),
            JSON,
        ],
        b'{"snake":true}',
    )


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("dict_header", "'X-Bad' has a dict value"),
        ("crlf_value", "'X-Injected' value contains a control character"),
        ("crlf_name", "'X-Bad\\r\\nEvil' (contains CR or LF)"),
        ("bad_status", "invalid response status code '200'"),
        ("object_body", "response of type object is not serialisable"),
        ("too_many_headers", "91 fields"),
        ("huge_header", "response headers too large"),
        ("huge_body", "response body of 4194305 bytes exceeds the 4194304 byte limit"),
    ],
)
def test_invalid_response_is_500_naming_the_problem(worker: Worker, case: str, named: str) -> None:
    outcome = worker.call("response_build", {"case": case})
    assert (outcome.status, outcome.headers) == (500, [TEXT])
    assert named in outcome.text
    assert named in outcome.result["error"]
    assert outcome.done["clean"] is True  # a bad response does not make the worker unsafe


class TestCookies:
    def cookies(self, worker: Worker, case: str) -> list[str]:
        status, headers, _ = reply(worker, "response_build", {"case": case})
        assert status == 200
        return [value for name, value in headers if name == "Set-Cookie"]

    def test_secure_defaults_added_and_domain_dropped(self, worker: Worker) -> None:
        assert self.cookies(worker, "cookie") == ["session=abc; Path=/; HttpOnly; Secure"]

    def test_flags_given_are_not_repeated(self, worker: Worker) -> None:
        assert self.cookies(worker, "cookie_flags_given") == ["c=1; HttpOnly; secure; SameSite=Lax"]

    def test_one_day_is_allowed(self, worker: Worker) -> None:
        assert self.cookies(worker, "cookie_one_day") == ["c=1; Max-Age=86400; HttpOnly; Secure"]

    def test_remove_cookie_drops_earlier_and_expires(self, worker: Worker) -> None:
        assert self.cookies(worker, "remove_cookie") == [
            "b=2; HttpOnly; Secure",
            "a=; Max-Age=0; HttpOnly; Secure",
        ]

    @pytest.mark.parametrize("case", ["cookie_too_long", "cookie_expires_far"])
    def test_over_one_day_is_400(self, worker: Worker, case: str) -> None:
        outcome = worker.call("response_build", {"case": case})
        assert (outcome.status, outcome.headers) == (400, [TEXT])
        assert "over one day" in outcome.text
        assert outcome.result["error"] is None  # not a server error
        assert any("over one day" in line for line in outcome.lines("logging"))

    def test_secure_defaults_can_be_switched_off(self, make_worker: Any) -> None:
        worker = make_worker(cookie_secure=False)
        assert self.cookies(worker, "cookie") == ["session=abc; Path=/"]


def test_limits_come_from_config(make_worker: Any) -> None:
    worker = make_worker(max_response_body=4, max_header_count=1)
    outcome = worker.call("respond_value", {"value": "hello"})
    assert outcome.status == 500
    assert "response body of 5 bytes exceeds the 4 byte limit" in outcome.text
    outcome = worker.call("response_build", {"case": "append_twice"})
    assert outcome.status == 500
    assert "2 fields" in outcome.text
