"""Worker uid ranges (daemon/sandbox/uid_claim.py), held by real processes in a private lock
folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fnd.daemon.sandbox.uid_claim import BLOCK, FIRST_UID, UidRangeTaken, claim, live_holders

_HOLD = """
import sys
from fnd.daemon.sandbox.uid_claim import claim
held = claim({base}, 8, "/srv/fnd/other", "/run/fnd/other/control.sock", lock_dir={dir!r})
print(held.first, held.last, flush=True)
sys.stdin.read()  # hold it until told to go (or killed)
"""


def _holder(lock_dir: Path, base: int | None = None) -> tuple[subprocess.Popen[str], int, int]:
    """Another process holding a range; returns it and the range's first and last uid."""
    process = subprocess.Popen([sys.executable, "-c", _HOLD.format(base=base, dir=str(lock_dir))],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    first, last = map(int, process.stdout.readline().split())
    return process, first, last


def test_automatic_ranges_are_whole_free_blocks_that_never_overlap(tmp_path: Path) -> None:
    one = claim(None, 8, "/srv/fnd/a", "/run/fnd/a/control.sock", lock_dir=str(tmp_path))
    two = claim(None, 8, "/srv/fnd/b", "/run/fnd/b/control.sock", lock_dir=str(tmp_path))
    try:
        assert one.count == two.count == BLOCK and one.automatic
        # On the block grid of 61000..61183, else of 65536 and up (uids that processes on
        # this host run as are skipped, so which block comes first depends on the host).
        grid = FIRST_UID if one.last < 61184 else 65536
        assert one.first >= grid and (one.first - grid) % BLOCK == 0
        assert two.first > one.last  # the next free block
        assert [h.first for h in live_holders(str(tmp_path))] == [one.first, two.first]
    finally:
        one.release()
        two.release()
    assert os.listdir(tmp_path) == []


def test_a_configured_base_overlapping_a_live_holder_is_refused_naming_it(
        tmp_path: Path) -> None:
    other, first, last = _holder(tmp_path, base=FIRST_UID + 1000)
    try:
        with pytest.raises(UidRangeTaken) as refused:
            claim(first + 7, 4, "/srv/fnd/mine", "/run/fnd/mine/control.sock",
                  lock_dir=str(tmp_path))
        message = str(refused.value)
        assert f"uids {first}-{last} held by fnd pid {other.pid}" in message
        assert "project /srv/fnd/other" in message and "/run/fnd/other/control.sock" in message
        beside = claim(last + 1, 4, "/srv/fnd/mine", "", lock_dir=str(tmp_path))  # adjacent: fine
        assert (beside.first, beside.last, beside.automatic) == (last + 1, last + 4, False)
        beside.release()
    finally:
        other.communicate("")


def test_a_killed_holders_range_is_free_again(tmp_path: Path) -> None:
    other, first, _ = _holder(tmp_path, base=FIRST_UID + 2000)
    other.send_signal(signal.SIGKILL)  # no cleanup at all: the kernel drops the flock
    other.wait()
    assert os.listdir(tmp_path) == [f"{first}-{first + 7}"]  # the file is left behind...
    mine = claim(first, 8, "/srv/fnd/mine", "", lock_dir=str(tmp_path))  # ...but free
    assert live_holders(str(tmp_path))[0].pid == os.getpid()
    mine.release()


def test_grow_takes_more_uids_unless_another_range_is_in_the_way(tmp_path: Path) -> None:
    base = FIRST_UID + 3000
    mine = claim(base, 4, "/srv/fnd/mine", "", lock_dir=str(tmp_path))
    mine.grow(8)
    assert (mine.first, mine.last) == (base, base + 7)
    other, first, _ = _holder(tmp_path, base=base + 8)
    try:
        with pytest.raises(UidRangeTaken, match=f"fnd pid {other.pid}"):
            mine.grow(12)
        assert (mine.first, mine.last) == (base, base + 7)  # still held as it was
        assert sorted(os.listdir(tmp_path)) == [f"{base}-{base + 7}", f"{first}-{first + 7}"]
    finally:
        other.communicate("")
        mine.release()
