"""Loading function modules: one module per file, cached per worker.

The rules they follow: docs/handlers.md#a-function-file.

A module's top-level code is the function's bootstrap: it runs the first time the function
is invoked (or ``Runtime.load``-ed) in this worker, and the module is kept for later
invocations. A module whose bootstrap raised is not cached, so the next request retries it.
"""

from __future__ import annotations

import enum
import importlib.util
import inspect
import site
import sys
import threading
from collections.abc import Callable
from types import FunctionType, ModuleType
from typing import Any

from fnd.worker.received_config import ReceivedConfig
from fnd.worker.serialize import describe


def use_deps(folder: str) -> None:
    """Put the project's own packages (``fnd deps``) first on this worker's import path.

    As a site dir, so that their .pth files work; called after the fork, so the zygote (and
    the next generation's workers) never see this generation's folder.
    """
    if not folder:
        return
    before = list(sys.path)
    site.addsitedir(folder)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before


class Style(enum.Enum):
    CALLBACK = "callback"  # handler(context, event, callback)
    RETURN = "return"  # handler(context, event) -> response


class FunctionError(Exception):
    """The function cannot run (the cause is chained). The message names the file and is
    for the log and ``--dev``; ``public`` says the same without paths, for a client."""

    def __init__(self, message: str, public: str) -> None:
        super().__init__(message)
        self.public = public


class Loader:
    def __init__(self, injected: dict[str, Any], settings: ReceivedConfig) -> None:
        self._injected = injected
        self._settings = settings
        self._modules: dict[str, ModuleType] = {}
        self._loading: dict[str, ModuleType] = {}
        # Re-entrant: a bootstrap may Runtime.load() another function.
        self._lock = threading.RLock()
        self._styles: dict[int, tuple[Callable[..., Any], Style]] = {}

    def module(self, route: str, file: str) -> ModuleType:
        """The module of a function file, running its bootstrap if not loaded yet."""
        with self._lock:
            module = self._modules.get(file) or self._loading.get(file)
            if module is not None:
                # A module still loading is returned half-initialised, as `import` does.
                return module
            name = "functions" + route
            code = self._settings.sources.get(file)
            spec = importlib.util.spec_from_file_location(name, file)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {self._settings.display_path(file)}")
            module = importlib.util.module_from_spec(spec)
            module.__dict__.update(self._injected)
            self._loading[file] = module
            sys.modules[name] = module
            try:
                if code is not None:
                    # The code the daemon read when it made this generation, not the file as
                    # it is now: a later edit on disk never reaches a running generation.
                    exec(compile(code, file, "exec", dont_inherit=True), module.__dict__)
                else:
                    spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            finally:
                del self._loading[file]
            self._modules[file] = module
            return module

    def display_path(self, file: str) -> str:
        return self._settings.display_path(file)

    def handler(self, route: str, file: str) -> tuple[Callable[..., Any], Style]:
        """The function's handler and its calling style; FunctionError if it has none."""
        shown = self._settings.display_path(file)
        try:
            module = self.module(route, file)
        except (Exception, SystemExit) as exc:  # sys.exit() in a bootstrap is a failure too
            raise FunctionError(f"error loading {shown}: {describe(exc)}",
                                f"the function could not be loaded: {type(exc).__name__}"
                                ) from exc
        handler = getattr(module, "handler", None)
        if handler is None:
            raise FunctionError(
                f"{shown} defines no handler; define handler(context, event, callback)",
                "the function defines no handler",
            )
        if not callable(handler):
            raise FunctionError(
                f"handler in {shown} is not callable (it is a {type(handler).__name__})",
                "the function's handler is not callable",
            )
        cached = self._styles.get(id(handler))
        if cached is not None and cached[0] is handler:
            return handler, cached[1]
        style = _style(handler, shown)
        self._styles[id(handler)] = (handler, style)
        return handler, style


def _style(handler: Callable[..., Any], shown: str) -> Style:
    positional, var_positional = _positional_parameters(handler)
    if positional is None or var_positional or positional >= 3:
        return Style.CALLBACK
    if positional == 2:
        return Style.RETURN
    raise FunctionError(
        f"handler in {shown} must take (context, event, callback) or (context, event); "
        f"it takes {positional} positional parameter(s)",
        "the function's handler takes the wrong parameters",
    )


def _positional_parameters(handler: Callable[..., Any]) -> tuple[int | None, bool]:
    """(positional parameters, whether it takes *args); (None, False) when unknowable."""
    if (type(handler) is FunctionType and not hasattr(handler, "__wrapped__")
            and not hasattr(handler, "__signature__")):
        # A plain def: read its code object. inspect.signature gives the same answer but costs
        # ~0.2 ms on the first call in a fresh worker, which every re-forked worker pays.
        code = handler.__code__
        return code.co_argcount, bool(code.co_flags & inspect.CO_VARARGS)
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return None, False  # no introspectable signature: use the documented default
    kinds = [p.kind for p in parameters]
    positional = sum(
        kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for kind in kinds
    )
    return positional, inspect.Parameter.VAR_POSITIONAL in kinds
