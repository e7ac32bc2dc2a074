"""``Twilio.Response``: status, headers and body set step by step (docs/handlers.md#twilioresponse).

Setters only record what the function asked for and return the response, as in Twilio's
runtime; validation (header syntax, cookie rules, limits) happens once, when the response is
serialised in ``fnd.worker.serialize``, so a bad value becomes a 500 that names it instead of an
exception at some unrelated line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

SET_COOKIE = "set-cookie"


class Response:
    """An HTTP response built by a function: ``Twilio.Response(status_code, body, headers)``.

    Every method exists in Twilio's camelCase and in snake_case, and returns the response so
    calls can be chained::

        response = Twilio.Response().setStatusCode(201).appendHeader("X-A", "1")
    """

    def __init__(
        self, status_code: int = 200, body: Any = None, headers: Mapping[str, Any] | None = None
    ) -> None:
        self.status_code = status_code
        self.body = body
        self.headers: dict[str, Any] = dict(headers or {})

    def __repr__(self) -> str:
        return f"<Twilio.Response {self.status_code} headers={self.headers!r}>"

    def set_status_code(self, status_code: int) -> Self:
        self.status_code = status_code
        return self

    def set_body(self, body: Any) -> Self:
        """str, bytes, dict/list (sent as JSON) or a TwiML object."""
        self.body = body
        return self

    def append_header(self, name: str, value: Any) -> Self:
        """Add a header; on an existing name (any case) the value is added, not replaced."""
        key = self._key(name)
        if key is None:
            self.headers[name] = value
        else:
            self.headers[key] = _as_list(self.headers[key]) + _as_list(value)
        return self

    def set_headers(self, headers: Mapping[str, Any]) -> Self:
        """Replace every header, cookies included. A list value means several header lines."""
        if not isinstance(headers, Mapping):
            raise TypeError(f"setHeaders expects a dict of headers, got {type(headers).__name__}")
        self.headers = dict(headers)
        return self

    def set_cookie(self, name: str, value: str, attributes: Sequence[str] = ()) -> Self:
        """Add a cookie. ``attributes`` are strings such as ``"Max-Age=3600"``, ``"Path=/"``.

        fnd adds ``HttpOnly`` and ``Secure`` unless present (setting ``cookie_secure``),
        drops ``Domain``, and answers 400 for a lifetime over one day, as Twilio's runtime does.
        """
        if isinstance(attributes, str):
            attributes = [attributes]
        cookie = f"{name}={value}" + "".join(f"; {attribute}" for attribute in attributes)
        return self.append_header("Set-Cookie", cookie)

    def remove_cookie(self, name: str) -> Self:
        """Forget earlier cookies of this name and tell the client to delete it."""
        for key in [k for k in self.headers if k.lower() == SET_COOKIE]:
            kept = [c for c in _as_list(self.headers[key]) if cookie_name(c) != name]
            if kept:
                self.headers[key] = kept
            else:
                del self.headers[key]
        return self.append_header("Set-Cookie", f"{name}=; Max-Age=0")

    def _key(self, name: str) -> str | None:
        lowered = name.lower()
        return next((key for key in self.headers if key.lower() == lowered), None)

    # Twilio's documented names.
    setStatusCode = set_status_code
    setBody = set_body
    appendHeader = append_header
    setHeaders = set_headers
    setCookie = set_cookie
    removeCookie = remove_cookie


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def cookie_name(cookie: Any) -> str | None:
    """The name of a ``Set-Cookie`` value (``"a=b; Path=/"`` -> ``"a"``)."""
    if not isinstance(cookie, str):
        return None
    return cookie.split(";", 1)[0].split("=", 1)[0].strip()
