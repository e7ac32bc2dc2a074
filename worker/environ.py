"""A function's ``os.environ``: a minimal base plus the project's variables.

Twilio puts a service's variables in ``process.env`` as well as in ``context``, and Python
libraries read their configuration from the environment (``TWILIO_ACCOUNT_SID``,
``*_API_KEY``...). A worker starts from a fixed base (``PATH``, ``HOME`` and ``TMPDIR`` at the
worker's scratch folder, ``LANG``), never anything of the daemon's environment. The project's
variables arrive with each invocation (the zygote, which every worker can read, holds none);
they are written to ``os.environ`` before the handler runs, so child processes see them too.

Which keys: every string-valued context key except ``PATH`` and ``DOMAIN_NAME``. Those two are
per-request context keys (the request path, the host), not variables; a project that sets them
in ``.env`` changes the context key only, and ``os.environ["PATH"]`` stays the base one so
programs are still found. The standard keys (``ACCOUNT_SID``...) are variables when set.

The variables are the same for every invocation of a project generation, so ``os.environ``
(whose writes call ``putenv``) is only touched when they changed. Changes a function makes to
``os.environ`` itself last for the worker's life, as ``process.env`` changes last for the
life of a Twilio container.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
_PER_REQUEST = frozenset({"PATH", "DOMAIN_NAME"})

class Environment:
    """This worker's ``os.environ``: the base, and the project's variables it last wrote.

    Made once in a new worker (the worker's loop holds it); making it replaces the inherited
    environment with the base.
    """

    def __init__(self) -> None:
        scratch = os.environ.get("TMPDIR") or tempfile.gettempdir()
        self._base = {"PATH": BASE_PATH, "HOME": scratch, "LANG": "C.UTF-8", "TMPDIR": scratch}
        self._applied: dict[str, str] = {}
        os.environ.clear()
        os.environ.update(self._base)

    def apply(self, context: Mapping[str, Any]) -> None:
        """Make the project's variables of ``context`` the ones in ``os.environ``."""
        variables = {
            key: value for key, value in context.items()
            if type(value) is str and key not in _PER_REQUEST
        }
        applied = self._applied
        if variables == applied:
            return
        base = self._base
        for key in applied.keys() - variables.keys():  # gone since the last invocation
            if key in base:
                os.environ[key] = base[key]
            else:
                os.environ.pop(key, None)
        for key, value in variables.items():
            if applied.get(key) != value and _settable(key, value):
                os.environ[key] = value
        self._applied = variables


def _settable(key: str, value: str) -> bool:
    # putenv refuses these; such a variable stays in context only
    return bool(key) and "=" not in key and "\0" not in key and "\0" not in value
