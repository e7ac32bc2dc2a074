"""The ``Twilio`` global of a function module, as in Twilio's Node runtime."""

from __future__ import annotations

from typing import TypeAlias

from twilio.twiml.fax_response import FaxResponse as _FaxResponse
from twilio.twiml.messaging_response import MessagingResponse as _MessagingResponse
from twilio.twiml.voice_response import VoiceResponse as _VoiceResponse

from fnd.worker.response import Response as _Response


class _TwiML:
    """``Twilio.twiml``: the TwiML builders of the ``twilio`` package."""

    VoiceResponse: TypeAlias = _VoiceResponse
    MessagingResponse: TypeAlias = _MessagingResponse
    FaxResponse: TypeAlias = _FaxResponse


class Twilio:
    """Namespace injected into every function module as ``Twilio``.

    ``Twilio.Response`` builds a response with status, headers and cookies;
    ``Twilio.twiml.VoiceResponse`` / ``MessagingResponse`` / ``FaxResponse`` are the real
    classes of the ``twilio`` package, and a TwiML object passed to callback is sent as XML.
    """

    Response: TypeAlias = _Response
    twiml = _TwiML
