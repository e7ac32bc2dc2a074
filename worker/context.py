"""The ``context`` argument of a handler (docs/handlers.md#context)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fnd.protocol.messages import TraceHeaders
from fnd.worker.twilio_client import make_client

_NO_TRACE: TraceHeaders = {"traceparent": "", "tracestate": ""}

# Always present, None when not configured, so `context.SERVICE_SID` never raises.
STANDARD = ("ACCOUNT_SID", "AUTH_TOKEN", "DOMAIN_NAME", "PATH", "SERVICE_SID", "ENVIRONMENT_SID")


class Context(Mapping[str, Any]):
    """Read-only view of the invocation's context.

    ``context.NAME``, ``context["NAME"]`` and ``context.get("NAME", default)`` all read the
    same values: ``ACCOUNT_SID``, ``AUTH_TOKEN``, ``DOMAIN_NAME``, ``PATH``, ``SERVICE_SID``,
    ``ENVIRONMENT_SID`` and every project variable. A variable whose name is also a method
    (``get``, ``keys``...) is reachable with ``context["get"]``.
    """

    _trace: TraceHeaders

    def __init__(self, values: Mapping[str, Any], api_base_url: str | None = None,
                 trace: TraceHeaders = _NO_TRACE) -> None:
        merged = dict.fromkeys(STANDARD)
        merged.update(values)
        object.__setattr__(self, "_values", merged)
        object.__setattr__(self, "_api_base_url", api_base_url)
        object.__setattr__(self, "_trace", trace)

    @property
    def traceparent(self) -> str:
        """W3C ``traceparent`` of this invocation's span (docs/handlers.md#trace-context):
        the request's trace, or a new one; pass it on to continue the trace."""
        return self._trace["traceparent"]

    @property
    def tracestate(self) -> str:
        """The request's W3C ``tracestate`` (checked), "" when none."""
        return self._trace["tracestate"]

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails, i.e. for variables. Read _values through
        # __dict__: copy/pickle probe attributes before __init__ ran, and must not recurse.
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(
                f"context has no {name!r}; set it in .env or [env] in fnd.toml"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("context is read-only")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        # Keys only: values include AUTH_TOKEN and end up in logs.
        return f"<Context {sorted(self._values)}>"

    def get_twilio_client(self, **options: Any) -> Any:
        """A ``twilio.rest.Client`` for ACCOUNT_SID/AUTH_TOKEN; ``options`` go to Client().
        Its requests carry a child ``traceparent`` of this invocation (unless ``options``
        has its own ``http_client``).

        Raises ``fnd.worker.api.CredentialsError`` naming the missing or malformed variable.
        """
        return make_client(
            self._values["ACCOUNT_SID"], self._values["AUTH_TOKEN"], self._api_base_url,
            self._trace, **options
        )

    getTwilioClient = get_twilio_client
