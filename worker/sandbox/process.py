"""Process hygiene right after fork: cgroups, scratch dir, inherited fds, signal state."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import stat

_SCRATCH_ROOT_MODE = 0o711  # workers may traverse to their own dir, not list the others


def join_cgroups(dirs: list[str]) -> None:
    """Move this process into each cgroup dir (v1: one per controller; v2: one)."""
    pid = str(os.getpid()).encode()
    for directory in dirs:
        fd = os.open(os.path.join(directory, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)


def make_scratch(root: str, slot: int, uid: int | None, gid: int | None) -> str:
    """An empty ``root/slot-N``, mode 0700, owned by the worker's uid (when root).

    A dir left by the slot's previous worker is emptied and reused when its owner and mode
    are right (cheaper than rmdir + mkdir); anything else at that path is replaced.
    """
    os.makedirs(root, mode=_SCRATCH_ROOT_MODE, exist_ok=True)
    if uid is not None:
        top = os.lstat(root)
        if not stat.S_ISDIR(top.st_mode) or top.st_uid != 0 or top.st_mode & 0o022:
            raise PermissionError(
                f"scratch_root {root} must be a directory owned by root, not writable by others"
            )
    path = os.path.join(root, f"slot-{slot}")
    owner = os.geteuid() if uid is None else uid
    st: os.stat_result | None = None
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
    if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == owner:
        _empty(path)
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)
        if gid is not None and st.st_gid != gid:
            os.chown(path, owner, gid)
        return path
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    os.mkdir(path, 0o700)
    if uid is not None and gid is not None:
        os.chown(path, uid, gid)
    return path


def _empty(path: str) -> None:
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def close_fds(keep: tuple[int, ...]) -> int:
    """Close every fd except 0-2 and ``keep``. Returns the number of fds kept above 2."""
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    kept = sorted({fd for fd in keep if fd > 2})
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    top = 1 << 30 if hard == resource.RLIM_INFINITY or hard > 1 << 30 else hard
    top = max(top, *(fd + 1 for fd in kept)) if kept else top
    low = 3
    for fd in kept:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, top)
    for fd in kept:
        os.fstat(fd)  # the fds the worker needs must still be open
    return len(kept)


def _startup_dispositions() -> dict[signal.Signals, object]:
    wanted: dict[signal.Signals, object] = {}
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        if sig in (signal.SIGPIPE, signal.SIGXFSZ):
            wanted[sig] = signal.SIG_IGN
        elif sig == signal.SIGINT:
            wanted[sig] = signal.default_int_handler
        else:
            wanted[sig] = signal.SIG_DFL
    return wanted


_STARTUP_DISPOSITIONS = _startup_dispositions()
# True once this process (or the zygote it was forked from) set every disposition itself:
# from then on signal.getsignal() is the truth and only the changed ones need a syscall.
_signals_in_sync = False


def reset_signals() -> None:
    """CPython's start-up signal state: SIGINT raises KeyboardInterrupt, SIGPIPE and SIGXFSZ
    are ignored (an over-size write raises EFBIG), everything else default, nothing blocked.

    The first call in a process sets all ~64 dispositions (a syscall each, 0.2 ms here); the
    zygote makes that call once, so a forked worker only resets what the zygote changed.
    """
    global _signals_in_sync
    for sig, wanted in _STARTUP_DISPOSITIONS.items():
        if _signals_in_sync and signal.getsignal(sig) is wanted:
            continue
        with contextlib.suppress(OSError, ValueError):  # reserved by the kernel or libc
            signal.signal(sig, wanted)  # type: ignore[arg-type]
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    _signals_in_sync = True
