"""The front-end ceiling: aiohttp's low-level server (the one fnd uses) answering hello world."""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


async def hello(request: web.BaseRequest) -> web.Response:
    return web.Response(text="hello world")


async def main(port: int) -> None:
    runner = web.ServerRunner(web.Server(hello), handle_signals=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
