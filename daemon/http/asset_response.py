"""Serving one asset file from a file descriptor that is already open (docs/differences.md#assets).

aiohttp's FileResponse opens its file by path when the response is prepared; a path can be
swapped for a symlink after the scan, so this response never touches a path: it sends the
file :mod:`fnd.daemon.http.asset_files` opened and checked, and closes it when done.

What it does, as FileResponse did: Content-Type by extension (text types with
``charset=utf-8``), ETag and Last-Modified with 304 on a conditional GET and 412 on failed
preconditions, a single Range (206, or 416), HEAD, and the body through ``loop.sendfile``
(chunked reads in the executor where the loop has no sendfile, as under uvloop; there a
client that takes nothing for ``send_timeout`` is cut off, as for a function's large answer:
docs/operating.md#slow-clients). Only the
route's own file is ever sent, never a pre-compressed ``.gz``/``.br`` twin (that could be
another route, even a private one).

The outcome is reported after the response is prepared, so the invocation log line carries
the status actually sent (304, 206, 416...), not the 200 the response started with.
"""

from __future__ import annotations

import asyncio
import functools
import mimetypes
import os
from collections.abc import Callable
from pathlib import Path

from aiohttp import ETag, hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter

from fnd.daemon.http.answer_stream import AnswerFacts, cut_off, drained
from fnd.daemon.http.asset_files import OpenedAsset

_CHUNK = 256 * 1024
_FALLBACK_TYPE = "application/octet-stream"

# Built-in table only (not the host's mime.types), compressed formats named as themselves:
# "a.tar.gz" is application/gzip, never "application/x-tar with a gzip encoding".
_TYPES = mimetypes.MimeTypes()
_TYPES.encodings_map.clear()
for _type, _ext in (("application/gzip", ".gz"), ("application/x-brotli", ".br"),
                    ("application/x-bzip2", ".bz2"), ("application/x-compress", ".Z"),
                    ("application/x-xz", ".xz")):
    _TYPES.add_type(_type, _ext)


_TEXT_APPLICATION_TYPES = frozenset({
    "application/javascript", "application/x-javascript", "application/ecmascript",
    "application/json", "application/xml", "application/xml-dtd",
})


@functools.lru_cache(maxsize=1024)
def _content_type(name: str) -> str:
    """The Content-Type for a file name; text types say ``charset=utf-8``, as Twilio's do."""
    media = _TYPES.guess_type(name)[0] or _FALLBACK_TYPE
    if (media.startswith("text/") or media in _TEXT_APPLICATION_TYPES
            or media.endswith(("+xml", "+json"))):
        return media + "; charset=utf-8"
    return media


class AssetResponse(web.StreamResponse):
    def __init__(
        self, opened: OpenedAsset, name: Path, loop: asyncio.AbstractEventLoop,
        on_sent: Callable[[int], None], send_timeout: float,
        invocation_id: str = "",
    ) -> None:
        super().__init__()
        self._file = opened.file
        self._stat = opened.stat
        self._name = name
        self._loop = loop
        self._on_sent = on_sent
        self._send_timeout = send_timeout
        self._invocation_id = invocation_id

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            return await self._send(request)
        finally:
            self._file.close()  # a read-only regular file: closing does not block
            self._on_sent(self.status)

    async def _send(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        st = self._stat
        etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
        self.etag = etag
        self.last_modified = st.st_mtime
        if _precondition_failed(request, etag, st.st_mtime):
            self.set_status(412)
            self.content_length = 0
            return await super().prepare(request)
        if _not_modified(request, etag, st.st_mtime):
            self.set_status(304)
            return await super().prepare(request)

        size = st.st_size
        offset, count = 0, size
        if request.headers.get(hdrs.RANGE) is not None and _range_applies(request, etag,
                                                                         st.st_mtime):
            try:
                span = request.http_range
            except ValueError:
                return await self._unsatisfiable(request, size)
            if span.start is not None:
                offset, count = _clamp(span.start, span.stop, size)
                if offset >= size:
                    return await self._unsatisfiable(request, size)
                self.set_status(206)
                self.headers[hdrs.CONTENT_RANGE] = f"bytes {offset}-{offset + count - 1}/{size}"

        self.headers[hdrs.CONTENT_TYPE] = _content_type(self._name.name)
        self.content_length = count
        self.headers[hdrs.ACCEPT_RANGES] = "bytes"
        if count == 0 or request.method == hdrs.METH_HEAD:
            return await super().prepare(request)
        writer = await super().prepare(request)  # sends the headers now
        assert isinstance(writer, StreamWriter)
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        try:
            await self._loop.sendfile(transport, self._file, offset, count)
        except NotImplementedError:
            await self._copy(request, writer, offset, count)
        await super().write_eof()
        return writer

    async def _copy(self, request: web.BaseRequest, writer: StreamWriter, offset: int,
                    count: int) -> None:
        """No sendfile on this loop: read chunks in the executor, write them out."""
        fd = self._file.fileno()
        size = count
        while count > 0:
            chunk = await self._loop.run_in_executor(None, os.pread, fd, min(_CHUNK, count),
                                                     offset)
            if not chunk:  # truncated since the fstat: send what there is
                break
            await writer.write(chunk, drain=False)
            offset += len(chunk)
            count -= len(chunk)
            if not await drained(request, writer, self._send_timeout):
                cut_off(request, self._send_timeout, AnswerFacts(self._invocation_id, None, None),
                        size - count, size)
        await writer.drain()

    async def _unsatisfiable(
        self, request: web.BaseRequest, size: int
    ) -> AbstractStreamWriter | None:
        self.headers[hdrs.CONTENT_RANGE] = f"bytes */{size}"
        self.set_status(416)
        self.content_length = 0
        return await super().prepare(request)


def _etag_in(etag: str, tags: tuple[ETag, ...], *, weak: bool) -> bool:
    """Whether ``etag`` (ours, always strong) is in an If-Match or If-None-Match list."""
    return any(tag.value == "*" or (tag.value == etag and (weak or not tag.is_weak))
               for tag in tags)


def _precondition_failed(request: web.BaseRequest, etag: str, mtime: float) -> bool:
    if (if_match := request.if_match) is not None:
        return not _etag_in(etag, if_match, weak=False)
    since = request.if_unmodified_since
    return since is not None and mtime > since.timestamp()


def _not_modified(request: web.BaseRequest, etag: str, mtime: float) -> bool:
    if (if_none_match := request.if_none_match) is not None:
        return _etag_in(etag, if_none_match, weak=True)
    since = request.if_modified_since
    return since is not None and mtime <= since.timestamp()


def _range_applies(request: web.BaseRequest, etag: str, mtime: float) -> bool:
    """If-Range: the range holds only while the client's validator is still current."""
    validator = request.headers.get(hdrs.IF_RANGE)
    if validator is None:
        return True
    if validator.startswith('"'):
        return validator == f'"{etag}"'
    if validator.startswith("W/"):  # a weak validator never matches for a range
        return False
    date = request.if_range
    return date is not None and mtime <= date.timestamp()


def _clamp(start: int, stop: int | None, size: int) -> tuple[int, int]:
    """(offset, byte count) of a parsed Range against a file of ``size`` bytes."""
    if start < 0 and stop is None:  # "bytes=-N": the last N bytes
        start = max(0, start + size)
        return start, size - start
    end = size if stop is None else min(stop, size)
    return start, max(0, end - start)
