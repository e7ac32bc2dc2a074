"""fnd daemon: the aiohttp front-end, pool, supervision, CLI and control API. Never runs user code."""

__version__ = "0.1.0"
