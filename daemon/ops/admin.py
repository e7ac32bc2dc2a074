"""The admin listener (`metrics_port`): `/metrics` for Prometheus, `/livez` and `/readyz` for
an orchestrator's probes.

The probes are answered from what the daemon already holds in memory (no process, no control
socket round trip), so a probe costs a few tens of microseconds of the daemon's CPU
(docs/scaling.md#probes). `/livez` says the event loop answers; `/readyz` says whether this
instance should get traffic, with the reason in plain text when it should not.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from fnd.daemon.ops.metrics import CONTENT_TYPE

_TEXT = "text/plain; charset=utf-8"


def not_ready_reason(*, serving: bool, draining: bool, ready_workers: int,
                     workers_min: int) -> str | None:
    """Why this instance should get no traffic now; None when it should."""
    if draining:
        return "draining"
    if not serving:
        return "starting"
    if ready_workers < workers_min:
        return f"{ready_workers} of workers_min {workers_min} workers ready"
    return None


async def start_admin_server(host: str, port: int, render: Callable[[], str],
                             not_ready: Callable[[], str | None],
                             server_header: str) -> web.AppRunner:
    """Serve the admin endpoints on ``host:port``; returns the runner (``.cleanup()`` stops it).

    Port 0 picks a free port: read it back from ``runner.addresses``. ``server_header`` is the
    ``Server`` header of every answer, as on the main listener (empty: none).
    """

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=render().encode(), headers={"Content-Type": CONTENT_TYPE})

    async def livez(_request: web.Request) -> web.Response:
        return web.Response(body=b"ok\n", headers={"Content-Type": _TEXT})

    async def readyz(_request: web.Request) -> web.Response:
        reason = not_ready()
        if reason is None:
            return web.Response(body=b"ready\n", headers={"Content-Type": _TEXT})
        return web.Response(status=503, body=f"not ready: {reason}\n".encode(),
                            headers={"Content-Type": _TEXT})

    async def set_server(_request: web.Request, response: web.StreamResponse) -> None:
        if server_header:
            response.headers["Server"] = server_header
        else:
            response.headers.popall("Server", None)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.on_response_prepare.append(set_server)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
