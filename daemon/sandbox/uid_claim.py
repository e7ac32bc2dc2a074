"""Worker uid ranges that never overlap between the fnd daemons of one host.

A root daemon runs slot N's worker as uid `first + N`, for N below its slot count. Two daemons
whose ranges overlap would share uids: RLIMIT_NPROC counts, and a worker of one could signal
the other's workers. So each daemon claims its range for its whole life: it keeps a file
`<first>-<last>` in LOCK_DIR open with an exclusive flock and records its pid, project and
control socket in it. The kernel drops the lock when the process ends, however it ends: a
file whose lock can be taken is a leftover, removed at the next scan. The lock, not the
recorded pid, is the proof: it holds across pid namespaces, so a daemon in a container or
under `unshare --pid` never takes a live neighbour's range (its pid is only shown). Scans
and claims hold a lock on the folder itself, so two daemons starting at once never pick the
same range.

Unset `uid_base`: the first free block of BLOCK uids (more for big pools) from FIRST_UID,
below systemd's DynamicUser= range, then above 65535, that no live daemon holds and no
process runs as. A configured `uid_base` whose range meets a live daemon's is refused,
naming that daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from fnd.daemon.ops.status import UidStatus

LOCK_DIR = "/run/fnd/uids"
FIRST_UID = 61000  # the first worker uid when uid_base is not set
BLOCK = 64  # automatic ranges are whole blocks: room to raise workers_max at a reload
# Where automatic ranges may lie: 61000..61183 (free in systemd's uid map), then the unused
# span above 65535 (61184..65519 are DynamicUser= uids, 65534/65535 nobody and -1).
_AUTO_SPANS = ((FIRST_UID, 61184), (65536, 524288))
_NAME = re.compile(r"^(\d+)-(\d+)$")


class UidRangeTaken(Exception):
    """The wanted range meets a live daemon's, or no free range is left; the message says
    which daemon or why."""


@dataclass(frozen=True)
class Holder:
    """A live daemon's claimed range, from its lock file."""

    first: int
    last: int
    pid: int | str
    project: str
    control: str

    def describe(self) -> str:
        return (f"uids {self.first}-{self.last} held by fnd pid {self.pid} "
                f"(project {self.project}, control {self.control})")


class UidClaim:
    """A range held by this process until `release` (or until it exits)."""

    def __init__(self, first: int, count: int, fd: int, path: str, automatic: bool) -> None:
        self.first = first
        self.count = count
        self.automatic = automatic
        self._fd = fd
        self._path = path
        self._info: dict[str, object] = {}

    @property
    def last(self) -> int:
        return self.first + self.count - 1

    def describe(self) -> str:
        return f"{self.first}-{self.last}" + (" (automatic)" if self.automatic else "")

    def status(self) -> UidStatus:
        return {"first": self.first, "last": self.last, "automatic": self.automatic}

    def grow(self, count: int) -> None:
        """Hold `count` uids from the same first one (a reload raised workers_max), or raise
        UidRangeTaken naming the daemon in the way; the range held so far stays held."""
        if count <= self.count:
            return
        lock_dir = os.path.dirname(self._path)
        with _locked(lock_dir):
            _refuse_overlap(lock_dir, self.first, count, own=self._path)
            fd, path = _hold(lock_dir, self.first, count, self._info)
            old_fd, old_path = self._fd, self._path
            self._fd, self._path, self.count = fd, path, count
            _drop(old_fd, old_path)

    def release(self) -> None:
        if self._fd >= 0:
            _drop(self._fd, self._path)
            self._fd = -1


def claim(uid_base: int | None, count: int, project: str, control: str,
          lock_dir: str = LOCK_DIR) -> UidClaim:
    """Hold `count` uids from `uid_base`, or from the first free block when it is None."""
    info: dict[str, object] = {"pid": os.getpid(), "project": project, "control": control}
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    with _locked(lock_dir):
        if uid_base is not None:
            _refuse_overlap(lock_dir, uid_base, count)
            first, automatic = uid_base, False
        else:
            first, automatic = _first_free(lock_dir, count), True
            count = _blocks(count)
        fd, path = _hold(lock_dir, first, count, info)
    held = UidClaim(first, count, fd, path, automatic)
    held._info = info
    return held


def live_holders(lock_dir: str = LOCK_DIR) -> list[Holder]:
    """Every range held by a live daemon (leftover files are removed on the way)."""
    with _locked(lock_dir):
        return list(_scan(lock_dir))


def _blocks(count: int) -> int:
    return -(-count // BLOCK) * BLOCK


def _first_free(lock_dir: str, count: int) -> int:
    size = _blocks(count)
    taken = [(h.first, h.last) for h in _scan(lock_dir)]
    # Uids that processes run as, held or not (an fnd that predates these locks, say).
    taken += [(uid, uid) for uid in _process_uids() if uid >= FIRST_UID]
    for start, end in _AUTO_SPANS:
        first = start
        while first + size <= end:
            clash = [last for low, last in taken if low < first + size and first <= last]
            if not clash:
                return first
            # Past the highest uid in the way, on the block grid of this span.
            first += _blocks(max(clash) + 1 - first)
    raise UidRangeTaken(f"no free range of {size} worker uids left; set uid_base")


def _process_uids() -> set[int]:
    """The effective uid of every process (the owner of its /proc folder)."""
    uids = set()
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    uids.add(entry.stat().st_uid)
    return uids


def _refuse_overlap(lock_dir: str, first: int, count: int, own: str = "") -> None:
    for holder in _scan(lock_dir, own):
        if holder.first < first + count and first <= holder.last:
            raise UidRangeTaken(f"worker uids {first}-{first + count - 1} overlap "
                                f"{holder.describe()}; choose another uid_base, or leave it "
                                f"unset for a free range")


def _scan(lock_dir: str, own: str = "") -> Iterator[Holder]:
    for name in sorted(os.listdir(lock_dir)):
        match = _NAME.match(name)
        path = os.path.join(lock_dir, name)
        if match is None or path == own:
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # held: its daemon is alive
                yield _holder(fd, int(match[1]), int(match[2]))
            else:  # nobody holds it: its daemon is gone
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        finally:
            os.close(fd)


def _holder(fd: int, first: int, last: int) -> Holder:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    return Holder(first, last, info.get("pid", "?"), str(info.get("project", "?")),
                  str(info.get("control", "?")))


def _hold(lock_dir: str, first: int, count: int, info: dict[str, object]) -> tuple[int, str]:
    path = os.path.join(lock_dir, f"{first}-{first + count - 1}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        # A leftover of the same name was free (the scan found no live holder of it).
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
    except OSError:
        os.close(fd)
        raise
    return fd, path


def _drop(fd: int, path: str) -> None:
    # Unlinked while still locked: a scanner that opened it meanwhile sees it held.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)


@contextlib.contextmanager
def _locked(lock_dir: str) -> Iterator[None]:
    fd = os.open(lock_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
