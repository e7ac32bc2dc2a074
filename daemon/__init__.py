"""fnd's server: the aiohttp front-end, the pool, supervision and the control API.

Nothing in this package imports or runs user code. Installed as ``fnd.daemon``.
"""
