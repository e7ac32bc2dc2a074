"""fnd: Twilio Functions style Python handlers on your own servers.

The names a function module uses, for type checkers and editors::

    from fnd import Callback, Context, Event, Twilio

    def handler(context: Context, event: Event, callback: Callback) -> None:
        callback(None, Twilio.twiml.MessagingResponse())

They are the objects of :mod:`fnd.worker.api`, loaded on first use: the daemon imports this
package too (for ``__version__``) and must not load the worker side or twilio with it.
Inside fnd the packages are ``fnd.daemon`` (the server), ``fnd.worker`` (sandbox and handler
runtime), ``fnd.protocol`` (the wire), ``fnd.ctl`` (operator tools) and ``fnd.author``
(author tools; ``fnd.testing`` is their pytest helper).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Asset", "Callback", "Context", "CredentialsError", "Event", "Response", "Runtime",
           "RuntimeAPI", "Twilio", "__version__"]

if TYPE_CHECKING:
    from fnd.worker.api import (
        Asset,
        Callback,
        Context,
        CredentialsError,
        Event,
        Response,
        Runtime,
        RuntimeAPI,
        Twilio,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fnd.worker import api

        return getattr(api, name)
    raise AttributeError(f"module 'fnd' has no attribute {name!r}")

