"""Building ``twilio.rest.Client`` objects for functions (docs/handlers.md#context).

Credentials are checked before the client is built, so a typo in ``.env`` is reported as
"which variable, and how to fix it" instead of a 401 from the API much later.

``twilio_api_base_url`` (fnd.toml / WorkerConfig): when set, every request of the clients
built here goes to that base URL instead of ``https://<sub>.twilio.com``; the path is kept
and the original host travels in the ``X-Twilio-Host`` header, so one test server or an
air-gapped gateway on loopback can stand in for every Twilio API domain.
Example: ``https://sync.twilio.com/v1/Services/default`` with the base URL
``http://127.0.0.1:8099`` becomes ``http://127.0.0.1:8099/v1/Services/default`` with
``X-Twilio-Host: sync.twilio.com``. An ``http_client`` passed by the function wins.
"""

from __future__ import annotations

# requests/urllib3 import these lazily on the first API call; a sandboxed worker reads only
# what Landlock lets it (docs/sandbox.md#the-layers), so import them now, before the sandbox.
import encodings.ascii  # noqa: F401
import encodings.idna  # noqa: F401
import netrc  # noqa: F401
import re
import shlex  # noqa: F401
from typing import Any

from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from fnd.protocol.messages import TraceHeaders
from fnd.protocol.trace import child

_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_TOKEN_LENGTH = 32
_TWILIO_URL = re.compile(r"https://(?P<host>[A-Za-z0-9.-]+\.twilio\.com)(?::443)?(?P<path>/.*)?")
_WHERE = "in .env (or [env] in fnd.toml)"


class CredentialsError(ValueError):
    """ACCOUNT_SID or AUTH_TOKEN is missing or malformed; the message says how to fix it."""


def check_credentials(account_sid: object, auth_token: object) -> tuple[str, str]:
    if not account_sid:
        raise CredentialsError(
            f"ACCOUNT_SID is not set: set ACCOUNT_SID (AC followed by 32 hex digits) {_WHERE}"
        )
    if not isinstance(account_sid, str) or not _SID.fullmatch(account_sid):
        raise CredentialsError(
            f"ACCOUNT_SID {str(account_sid)[:40]!r} is malformed: expected AC followed by "
            f"32 hex digits; fix ACCOUNT_SID {_WHERE}"
        )
    if not auth_token:
        raise CredentialsError(
            f"AUTH_TOKEN is not set: set AUTH_TOKEN (32 characters, from the Twilio "
            f"console) {_WHERE}"
        )
    if not isinstance(auth_token, str) or len(auth_token) != _TOKEN_LENGTH:
        found = len(auth_token) if isinstance(auth_token, str) else type(auth_token).__name__
        # Never echo the token itself: it is a secret and this message reaches the client.
        raise CredentialsError(
            f"AUTH_TOKEN is malformed: expected {_TOKEN_LENGTH} characters, found {found}; "
            f"fix AUTH_TOKEN {_WHERE}"
        )
    return account_sid, auth_token


def make_client(
    account_sid: object, auth_token: object, api_base_url: str | None,
    trace: TraceHeaders | None = None, **options: Any
) -> Any:
    """A real ``twilio.rest.Client`` (options passed through), redirected if configured;
    its requests carry a child of ``trace`` (W3C Trace Context)."""
    sid, token = check_credentials(account_sid, auth_token)
    if "http_client" not in options and (api_base_url or (trace and trace["traceparent"])):
        options["http_client"] = TracingHttpClient(trace, api_base_url)
    return Client(sid, token, **options)


class TracingHttpClient(TwilioHttpClient):  # type: ignore[misc]
    """TwilioHttpClient whose every request carries ``traceparent`` (a new span of the
    invocation's trace) and ``tracestate``, and which sends ``https://<sub>.twilio.com/...``
    to ``base_url`` when one is set."""

    def __init__(self, trace: TraceHeaders | None, base_url: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trace = trace
        self.base_url = base_url.rstrip("/") if base_url else None

    def request(
        self,
        method: str,
        url: str,
        params: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        auth: Any = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Any:
        headers = dict(headers or {})
        trace = self.trace
        if trace and trace["traceparent"]:
            headers["traceparent"] = child(trace["traceparent"])
            if trace["tracestate"]:
                headers["tracestate"] = trace["tracestate"]
        match = _TWILIO_URL.fullmatch(url) if self.base_url else None
        if match:
            url = f"{self.base_url}{match['path'] or '/'}"
            headers["X-Twilio-Host"] = match["host"]
        return super().request(method, url, params, data, headers, auth, timeout, allow_redirects)
