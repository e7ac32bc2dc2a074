"""fnd daemon: the aiohttp front-end, pool, supervision, CLI and control API.

Nothing in this package imports or runs user code.
"""

__version__ = "0.1.0"
