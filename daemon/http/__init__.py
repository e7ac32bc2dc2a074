"""The HTTP front-end: the aiohttp application, the event, signatures, assets, timeouts and
listeners. Never runs user code.
"""
