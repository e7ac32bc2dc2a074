"""Assets served by the daemon itself (docs/differences.md#assets) over real HTTP.

Content-Type by extension, ETag/Last-Modified with 304, Range, the ``GET /`` rule, private
assets never served, and path traversal attempts (encoded, double-encoded, dot segments,
symlinks leaving the project) that all end in 404.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fndserver import FIXTURES, FndServer, running

BIG = "".join(f"{i:08d}\n" for i in range(200_000))  # 1.8 MB of predictable bytes
SECRET_MARKERS = ("root:", "do-not-serve-me", "never served", '"secret"', "hidden-file-content")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture plus what git does not hold well: symlinks, gzip files, a large file."""
    source = tmp_path_factory.mktemp("assets-src") / "assets"
    shutil.copytree(FIXTURES / "assets", source)
    assets = source / "assets"
    (assets / "big.txt").write_text(BIG)
    (assets / "notes.txt.gz").write_bytes(gzip.compress(b"compressed twin\n"))
    (assets / "doc.private.gz").write_bytes(gzip.compress(b'"secret" private doc\n'))
    os.symlink("/etc/passwd", assets / "passwd")  # leaves the project
    os.symlink("../.env", assets / "env.txt")  # a hidden file of the project
    os.symlink("../fnd.toml", assets / "toml.txt")  # its configuration
    os.symlink("notes.txt", assets / "linked.txt")  # inside: allowed
    return source


@pytest.fixture(scope="module")
def fnd(project: Path) -> Iterator[FndServer]:
    # The links that leave the project are problems: reported, and the rest served.
    with running(project, "--workers-min", "1", "--allow-broken") as server:
        yield server


def raw_status(fnd: FndServer, target: str, **headers: str) -> tuple[int, bytes]:
    """Send ``target`` byte for byte (no client-side normalisation); status and body."""
    host, port = fnd.url.removeprefix("http://").rsplit(":", 1)
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(("path", "content_type"), [
    ("/style.css", "text/css"),
    ("/app.js", "javascript"),
    ("/data.json", "application/json"),
    ("/img/icon.svg", "image/svg+xml"),
    ("/index.html", "text/html"),
    ("/notes.txt", "text/plain"),
])
def test_content_type_by_extension(fnd: FndServer, path: str, content_type: str) -> None:
    response = fnd.get(path)
    assert response.status_code == 200
    media = response.headers["Content-Type"].split(";")[0]
    # .js is text/javascript or application/javascript, as the host's mime.types says
    assert media == content_type or media.endswith("/" + content_type)
    assert response.headers["X-Fnd-Invocation-Id"]


def test_etag_and_last_modified_give_304(fnd: FndServer) -> None:
    first = fnd.get("/style.css")
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    by_etag = fnd.get("/style.css", headers={"If-None-Match": etag})
    assert by_etag.status_code == 304 and by_etag.content == b""
    assert by_etag.headers["ETag"] == etag
    by_date = fnd.get("/style.css", headers={"If-Modified-Since": modified})
    assert by_date.status_code == 304
    assert fnd.get("/style.css", headers={"If-None-Match": '"other"'}).status_code == 200
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert fnd.get("/style.css", headers={"If-Modified-Since": old}).status_code == 200
    # The invocation line carries the status actually sent.
    assert fnd.invocation(by_etag.headers["X-Fnd-Invocation-Id"])["status"] == 304


def test_range_requests_on_a_large_file(fnd: FndServer) -> None:
    whole = fnd.get("/big.txt")
    assert whole.text == BIG and whole.headers["Accept-Ranges"] == "bytes"
    part = fnd.get("/big.txt", headers={"Range": "bytes=900000-900099"})
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 900000-900099/{len(BIG)}"
    assert part.text == BIG[900000:900100]
    tail = fnd.get("/big.txt", headers={"Range": "bytes=-9"})
    assert tail.status_code == 206 and tail.text == BIG[-9:]
    beyond = fnd.get("/big.txt", headers={"Range": f"bytes={len(BIG) + 10}-"})
    assert beyond.status_code == 416


def test_head_and_other_methods(fnd: FndServer) -> None:
    head = fnd.request("HEAD", "/big.txt")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(BIG))
    post = fnd.request("POST", "/style.css", data={"a": "b"})
    assert post.status_code == 405 and "GET" in post.headers["Allow"]


def test_get_root_prefers_assets_index_html(fnd: FndServer) -> None:
    root = fnd.get("/")
    assert root.status_code == 200 and "assets index" in root.text
    assert "root index" in fnd.get("/index.html").text
    assert "assets index" in fnd.get("/assets/index.html").text


def test_get_root_falls_back_to_index_html_then_404() -> None:
    with running("contract", "--workers-min", "1") as fnd:  # only assets/index.html
        assert fnd.get("/").text.startswith("<!doctype html>")
    with running("parity", "--workers-min", "1") as fnd:  # no index at all
        assert fnd.get("/").status_code == 404


def test_private_assets_are_never_served(fnd: FndServer) -> None:
    for path in ("/config.json", "/config.private.json", "/doc.gz", "/doc.private.gz"):
        assert fnd.get(path).status_code == 404, path


def test_no_precompressed_twin_is_served_instead(fnd: FndServer) -> None:
    notes = fnd.get("/notes.txt", headers={"Accept-Encoding": "gzip, br"})
    assert notes.text == "plain notes\n" and "Content-Encoding" not in notes.headers
    # /doc.private is public; doc.private.gz next to it is the *private* asset /doc.gz.
    doc = fnd.get("/doc.private", headers={"Accept-Encoding": "gzip"})
    assert doc.text == "public doc\n" and "Content-Encoding" not in doc.headers


def test_symlinks_inside_are_served_and_outside_refused(fnd: FndServer) -> None:
    assert fnd.get("/linked.txt").text == "plain notes\n"
    problems = " ".join(str(line.get("problem")) for line in fnd.lines
                        if line.get("event") == "project problem")
    assert "assets/passwd" in problems and "outside the project" in problems
    assert "assets/env.txt" in problems and "assets/toml.txt" in problems


@pytest.mark.parametrize("target", [
    "/passwd", "/env.txt", "/toml.txt",
    "/..%2f..%2fetc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/..%252f..%252fetc%252fpasswd",
    "/%252e%252e%252ffnd.toml",
    "/assets/../fnd.toml",
    "/../fnd.toml",
    "/style.css/../../fnd.toml",
    "/%2e%2e%2f.env",
    "/..\\..\\etc\\passwd",
    "//etc/passwd",
    "/fnd.toml", "/.env", "/.hidden.txt",
    "/functions/hello.py", "/hello.py", "/assets/style.css",
    "http://localhost/../../etc/passwd",
])
def test_traversal_attempts_are_404(fnd: FndServer, target: str) -> None:
    status, body = raw_status(fnd, target)
    assert status == 404, target
    for marker in SECRET_MARKERS:
        assert marker.encode() not in body, (target, marker)
