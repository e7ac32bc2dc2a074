"""Assets swapped on disk after start-up against a real `fnd serve` running as root
(docs/differences.md#assets).

The daemon serves the file each route recorded at scan time and nothing else: a symlink put
in place of an asset or of a folder on its way (to a 0600 secret outside the project), or a
new regular file renamed over it, all get 404 with a one-line reason that the log repeats,
and never the secret. A reload scans again and serves the new file.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from fnd.ctl.client import request as control_request
from tests.fndserver import FndServer, running

SECRET = "swapped-in-secret-7d1e0c"


@pytest.fixture(scope="module")
def fnd() -> Iterator[FndServer]:
    # It leaves broken links behind on purpose; a reload must still take the rest.
    with running("assets", "--workers-min", "1", "--allow-broken") as server:
        secret = server.project.parent / "secret.txt"
        secret.write_text(SECRET + "\n")
        secret.chmod(0o600)
        outside = server.project.parent / "outside-img"
        outside.mkdir()
        (outside / "icon.svg").write_text(SECRET + "\n")
        yield server


def refused(fnd: FndServer, path: str, why: str) -> None:
    """``path`` answers 404 with the reason ``why``, the log says so, and no secret leaks."""
    for method in ("GET", "HEAD"):
        response = fnd.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert SECRET not in response.text
        line = fnd.invocation(response.headers["X-Fnd-Invocation-Id"])
        assert line["status"] == 404 and why in line["reason"], line
        assert "reload fnd to serve it" in line["reason"]
    body = fnd.get(path).text
    assert body.count("\n") == 1 and why in body and path in body


def test_an_asset_replaced_by_a_symlink_is_not_followed(fnd: FndServer) -> None:
    notes = fnd.project / "assets" / "notes.txt"
    assert fnd.get("/notes.txt").text == "plain notes\n"
    notes.unlink()
    os.symlink(fnd.project.parent / "secret.txt", notes)
    refused(fnd, "/notes.txt", "a symlink now stands in its path")


def test_a_folder_replaced_by_a_symlink_is_not_followed(fnd: FndServer) -> None:
    img = fnd.project / "assets" / "img"
    assert fnd.get("/img/icon.svg").status_code == 200
    img.rename(fnd.project / "assets" / "img-old")
    os.symlink(fnd.project.parent / "outside-img", img)
    refused(fnd, "/img/icon.svg", "a symlink now stands in its path")


def test_a_regular_file_renamed_over_an_asset_needs_a_reload(fnd: FndServer) -> None:
    assets = fnd.project / "assets"
    before = fnd.get("/style.css")
    assert before.status_code == 200
    (assets / "style.new").write_text("body { color: red }\n")
    (assets / "style.new").chmod(0o644)
    (assets / "style.new").rename(assets / "style.css")
    refused(fnd, "/style.css", "another file replaced it")
    # Deploying is a reload: it scans again and serves the new file.
    reply = asyncio.run(control_request(fnd.control, {"cmd": "reload"}))
    assert reply["ok"], reply
    after = fnd.get("/style.css")
    assert after.status_code == 200 and after.text == "body { color: red }\n"
    assert after.headers["ETag"] != before.headers["ETag"]
    # The link to the secret is refused by the scan itself now: no route at all.
    gone = fnd.get("/notes.txt")
    assert gone.status_code == 404 and SECRET not in gone.text
    assert "no function or asset" in gone.text


def test_an_asset_edited_in_place_is_still_served(fnd: FndServer) -> None:
    data = fnd.project / "assets" / "data.json"
    with data.open("w") as f:  # same file (inode), new content: that is the file the scan saw
        f.write('{"edited": true}\n')
    assert fnd.get("/data.json").json() == {"edited": True}
