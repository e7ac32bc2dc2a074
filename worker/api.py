"""The names a function module sees, importable for type checkers and editors.

Inside a function module ``Twilio`` and ``Runtime`` exist without import, as in Twilio's
runtime. Importing them from here gives the very same objects, plus types for annotations::

    from fnd import Callback, Context, Event, Runtime, Twilio

    def handler(context: Context, event: Event, callback: Callback) -> None:
        twiml = Twilio.twiml.MessagingResponse()
        twiml.message(f"Hello from {context.DOMAIN_NAME}")
        callback(None, twiml)

    async def handler(context: Context, event: Event) -> Twilio.Response:  # return style
        return Twilio.Response(201, {"ok": True})

Every method Twilio documents in camelCase also exists in snake_case:

- ``context.getTwilioClient(**options)`` / ``get_twilio_client`` -> ``twilio.rest.Client``;
  raises :class:`CredentialsError` naming a missing or malformed ACCOUNT_SID / AUTH_TOKEN.
  Its requests carry a child of ``context.traceparent`` (W3C; ``context.tracestate`` too).
- ``Runtime.getFunctions()`` / ``get_functions`` -> ``{"a/b": {"path": "/abs/a/b.py"}}``;
  ``Runtime.load("a/b")`` imports another function module (private ones too) to share code.
- ``Runtime.getAssets()`` / ``get_assets`` -> ``{"/path": Asset}``; ``asset.open()`` returns
  the text, ``asset.open("rb")`` / ``asset.read_bytes()`` the bytes.
- ``Runtime.getSync(serviceName="default")`` / ``get_sync(service_name=...)`` -> the Sync
  service of the context's client.
- ``Twilio.Response``: ``setStatusCode``, ``setBody``, ``appendHeader``, ``setHeaders``,
  ``setCookie``, ``removeCookie`` and their snake_case forms; all return the response.

``callback(error=None, response=None)`` sends the response at once and does not return:
statements after it do not run, ``finally`` blocks do. It stops the handler by raising a
``BaseException``, so do not catch it with a bare ``except:`` or ``except BaseException``.
"""

from __future__ import annotations

from typing import Any, NoReturn, Protocol

from fnd.worker.context import Context
from fnd.worker.response import Response
from fnd.worker.runtime import Asset, Runtime, RuntimeAPI
from fnd.worker.twilio_api import Twilio
from fnd.worker.twilio_client import CredentialsError

Event = dict[str, Any]


class Callback(Protocol):
    """``callback(error=None, response=None)``: completes the invocation; never returns."""

    def __call__(self, error: object = None, response: object = None) -> NoReturn: ...


__all__ = [
    "Asset",
    "Callback",
    "Context",
    "CredentialsError",
    "Event",
    "Response",
    "Runtime",
    "RuntimeAPI",
    "Twilio",
]
