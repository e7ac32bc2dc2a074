"""Serving one asset file (SPEC 6.2), with aiohttp's FileResponse doing the HTTP work.

FileResponse gives Content-Type by extension, ETag/Last-Modified, 304 on conditional GET,
412 on failed preconditions and Range (206/416), using sendfile. Two changes:

- No pre-compressed siblings. FileResponse would answer ``/a.txt`` with the file
  ``a.txt.gz`` when the client accepts gzip; that file is not the scanned route (it could be
  a private asset, e.g. ``a.private.gz`` for ``/a.private``), so only the route's own file
  is ever sent.
- The outcome is reported after the response is prepared, so the invocation log line carries
  the status actually sent (304, 206, 416...), not the 200 the response started with.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from aiohttp.abc import AbstractStreamWriter


class AssetResponse(web.FileResponse):
    def __init__(self, path: Path, on_sent: Callable[[int], None]) -> None:
        super().__init__(path)
        self._on_sent = on_sent

    def _get_file_path_stat_encoding(
        self, accept_encoding: str
    ) -> tuple[Path | None, os.stat_result, str | None]:
        # An empty Accept-Encoding makes FileResponse skip its .br/.gz sibling lookup.
        return super()._get_file_path_stat_encoding("")

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            return await super().prepare(request)
        finally:
            self._on_sent(self.status)
