"""The ``Runtime`` global of a function module (docs/handlers.md#runtime)."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

# Imported now: a sandboxed worker may not be able to read the library lazily later.
import twilio.rest.sync  # noqa: F401

if TYPE_CHECKING:
    from fnd.worker.context import Context
    from fnd.worker.loader import Loader


class Asset:
    """A private asset: ``asset.path`` is its file; ``asset.open()`` returns its text."""

    def __init__(self, route: str, path: str) -> None:
        self.route = route
        self.path = path

    def __repr__(self) -> str:
        return f"<Asset {self.route} {self.path}>"

    def open(self, mode: str = "r") -> Any:
        """The contents: text for ``"r"`` (as Twilio's ``open()``), bytes for ``"rb"``."""
        if mode == "r":
            return self.read_text()
        if mode == "rb":
            return self.read_bytes()
        raise ValueError(f"asset.open() mode must be 'r' or 'rb', not {mode!r}")

    def read_text(self, encoding: str = "utf-8") -> str:
        with open(self.path, encoding=encoding) as file:
            return file.read()

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as file:
            return file.read()


class RuntimeAPI:
    """Namespace injected into every function module as ``Runtime``."""

    def __init__(self) -> None:
        self._functions: dict[str, str] = {}
        self._assets: dict[str, str] = {}
        self._loader: Loader | None = None
        self._context: Context | None = None

    def configure(self, functions: dict[str, str], assets: dict[str, str], loader: Loader) -> None:
        self._functions = dict(functions)
        self._assets = dict(assets)
        self._loader = loader

    def bind(self, context: Context | None) -> None:
        """The current invocation's context, used by getSync (one invocation at a time)."""
        self._context = context

    def get_functions(self) -> dict[str, dict[str, str]]:
        """``{"a/b": {"path": "/abs/functions/a/b.py"}}`` for every function, private too."""
        return {route.lstrip("/"): {"path": file} for route, file in self._functions.items()}

    def load(self, name: str) -> ModuleType:
        """Import another function module by name (``"a/b"`` or ``"/a/b"``) to share code.

        Runs its module-level code once per worker, exactly as if it had been invoked.
        """
        route = "/" + name.lstrip("/")
        file = self._functions.get(route)
        if file is None or self._loader is None:
            raise LookupError(f"no function named {name!r}; see Runtime.getFunctions()")
        return self._loader.module(route, file)

    def get_assets(self) -> dict[str, Asset]:
        """``{"/path": asset}`` for every private asset."""
        return {route: Asset(route, file) for route, file in self._assets.items()}

    def get_sync(self, service_name: str = "default") -> Any:
        """The Sync service ``service_name`` (a ServiceContext) of the context's client."""
        if self._context is None:
            raise RuntimeError("Runtime.getSync() needs a running invocation")
        return self._context.get_twilio_client().sync.v1.services(service_name)

    def getSync(self, serviceName: str = "default") -> Any:
        return self.get_sync(serviceName)

    getFunctions = get_functions
    getAssets = get_assets


Runtime = RuntimeAPI()
