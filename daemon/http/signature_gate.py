"""The signature gate of protected functions and assets: may this request go in?

``fnd.daemon.http.signature`` knows how to check an ``X-Twilio-Signature``; this module decides what
the client gets when the check fails, so that the front-end only asks one question. Public
routes never get here: the front-end tests ``route.visibility`` first, so they pay nothing.

Decisions beyond docs/differences.md#signatures:

- The check runs before the body is validated: an unsigned client learns nothing from a 400,
  and a form body that cannot even be decoded cannot carry a valid signature (→ 401/403).
- ``OPTIONS`` on a protected path is answered by the CORS rule without a signature: browsers
  send preflights without custom headers, and the answer reveals nothing but the path.
- Bodies that are neither form nor JSON are signed as "URL only", as Twilio signs GETs.
- Without ``AUTH_TOKEN`` a protected asset answers 500 as a protected function does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fnd.daemon import calls
from fnd.daemon.calls import Outcome, text_outcome
from fnd.daemon.config import Config
from fnd.daemon.http.event import NO_BODY, ParsedBody
from fnd.daemon.http.signature import check_signature, url_for_request
from fnd.daemon.logs import get_logger

if TYPE_CHECKING:
    from aiohttp.web import BaseRequest

    from fnd.daemon.http.origin import Origin
    from fnd.daemon.project import Route

SIGNATURE_HEADER = "X-Twilio-Signature"
NO_TOKEN = "protected function needs AUTH_TOKEN"

_log = get_logger("fnd")


class SignatureGate:
    """Built once per configuration; ``check`` is called for protected routes only."""

    def __init__(self, config: Config, auth_token: str | None) -> None:
        self._skip = config.no_signatures  # only ever True together with --dev (config.py)
        self._token = auth_token or None
        self._public_url = config.public_url

    def check(
        self,
        request: BaseRequest,
        origin: Origin,
        route: Route,
        invocation_id: str,
        body: bytes = b"",
        parsed: ParsedBody = NO_BODY,
    ) -> Outcome | None:
        """None to let the request in; else the answer (401 function, 403 asset, 500).

        ``parsed`` is the body as fnd.daemon.http.event.read_body read it, malformed or not (an
        asset's request carries no parameters: NO_BODY).
        """
        if self._skip:
            _log.warning("signature check skipped", invocation_id=invocation_id,
                         path=request.path, reason="--dev --no-signatures")
            return None
        if self._token is None:
            message = NO_TOKEN if route.kind == "function" else "protected asset needs AUTH_TOKEN"
            return text_outcome(500, calls.ERROR, message + "; set AUTH_TOKEN in .env")
        status = 401 if route.kind == "function" else 403
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            return text_outcome(status, calls.REJECTED, f"{SIGNATURE_HEADER} header is missing")
        if self._valid(request, origin, signature, body, parsed):
            return None
        return text_outcome(status, calls.REJECTED, f"{SIGNATURE_HEADER} is not valid for "
                            "this URL and these parameters")

    def _valid(
        self, request: BaseRequest, origin: Origin, signature: str, body: bytes,
        parsed: ParsedBody,
    ) -> bool:
        assert self._token is not None
        url = url_for_request(request, origin, public_url=self._public_url)
        if parsed.kind == "json":
            # Twilio signs JSON requests over the URL, which carries the body's bodySHA256
            # (malformed JSON too: it is refused with 400 once the signature holds).
            return check_signature(self._token, url, (), signature, json_body=body)
        if parsed.kind == "form":
            if parsed.error is not None:  # undecodable: no signature can cover it
                return False
            return check_signature(self._token, url, parsed.form, signature)
        return check_signature(self._token, url, (), signature)
