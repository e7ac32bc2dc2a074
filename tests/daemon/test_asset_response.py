"""AssetResponse over real HTTP, on asyncio's loop (sendfile) and on uvloop (chunked reads).

fnd runs on uvloop when it is installed, so the e2e tests only see the chunked path; this
serves a real file from an opened fd through an aiohttp server on both loops.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fnd.daemon.http.asset_files import AssetFiles
from fnd.daemon.http.asset_response import AssetResponse
from fnd.daemon.project import scan_project

pytestmark = pytest.mark.unit

BIG = "".join(f"{i:08d}\n" for i in range(100_000))  # 900 kB: several chunks


def loops() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


def run(kind: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if kind == "uvloop":
        import uvloop
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        loop.close()


Check = Callable[[aiohttp.ClientSession, str], Coroutine[Any, Any, None]]


def serve(kind: str, tmp_path: Path, check: Check) -> list[int]:
    """Run ``check`` against a server answering every path with the asset /big.txt."""
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "big.txt").write_text(BIG)
    project = scan_project(tmp_path)
    files = AssetFiles(str(project.root))
    route = project.assets["/big.txt"]
    sent: list[int] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        opened = await loop.run_in_executor(None, files.open, route)
        return AssetResponse(opened, route.file, loop, sent.append, send_timeout=60.0)

    async def main() -> None:
        runner = web.ServerRunner(web.Server(handler))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                await check(session, f"http://127.0.0.1:{port}/big.txt")
        finally:
            await runner.cleanup()

    run(kind, main)
    return sent


@pytest.mark.parametrize("kind", loops())
def test_whole_file_head_and_validators(kind: str, tmp_path: Path) -> None:
    async def check(session: aiohttp.ClientSession, url: str) -> None:
        async with session.get(url) as r:
            assert r.status == 200 and await r.text() == BIG
            assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert r.headers["Accept-Ranges"] == "bytes"
            etag, modified = r.headers["ETag"], r.headers["Last-Modified"]
        async with session.head(url) as r:
            assert r.status == 200 and r.headers["Content-Length"] == str(len(BIG))
        async with session.get(url, headers={"If-None-Match": etag}) as r:
            assert r.status == 304 and await r.read() == b"" and r.headers["ETag"] == etag
        async with session.get(url, headers={"If-Modified-Since": modified}) as r:
            assert r.status == 304
        async with session.get(url, headers={"If-Match": '"other"'}) as r:
            assert r.status == 412
        async with session.get(url, headers={"If-Match": etag}) as r:
            assert r.status == 200

    assert serve(kind, tmp_path, check) == [200, 200, 304, 304, 412, 200]


@pytest.mark.parametrize("kind", loops())
def test_ranges(kind: str, tmp_path: Path) -> None:
    async def check(session: aiohttp.ClientSession, url: str) -> None:
        async with session.get(url, headers={"Range": "bytes=500000-500099"}) as r:
            assert r.status == 206 and await r.text() == BIG[500000:500100]
            assert r.headers["Content-Range"] == f"bytes 500000-500099/{len(BIG)}"
            etag = r.headers["ETag"]
        async with session.get(url, headers={"Range": "bytes=-9"}) as r:
            assert r.status == 206 and await r.text() == BIG[-9:]
        async with session.get(url, headers={"Range": "bytes=899990-"}) as r:
            assert r.status == 206 and await r.text() == BIG[899990:]
        async with session.get(url, headers={"Range": f"bytes={len(BIG)}-"}) as r:
            assert r.status == 416 and r.headers["Content-Range"] == f"bytes */{len(BIG)}"
        async with session.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}) as r:
            assert r.status == 206 and await r.text() == BIG[:10]
        async with session.get(url, headers={"Range": "bytes=0-9", "If-Range": '"old"'}) as r:
            assert r.status == 200 and await r.text() == BIG  # the file changed: all of it

    assert serve(kind, tmp_path, check) == [206, 206, 206, 416, 206, 200]


def test_the_file_is_closed_once_sent(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))

    async def check(session: aiohttp.ClientSession, url: str) -> None:
        for _ in range(20):
            async with session.get(url) as r:
                await r.read()

    serve("asyncio", tmp_path, check)
    assert len(os.listdir("/proc/self/fd")) <= before + 1  # the project handle, until GC
