"""Give freed memory back to the system (docs/operating.md#slow-clients).

glibc serves a large allocation (a 4 MiB answer, a worker frame) with its own mmap, but it
raises that mmap threshold each time such a block is freed (up to 32 MiB): the next large
buffers then come from the heap, and a heap that grew while slow clients held answers stays
grown after they leave. Fixing the threshold at start (``mallopt``) turns the dynamic rule
off, so every large buffer is unmapped when it is freed; ``malloc_trim(0)`` after a burst
of buffered answers gives back the heap pages the small objects around them left free.

Both are glibc's; on another libc they are skipped (and the daemon says so in its log).
"""

from __future__ import annotations

import ctypes
import ctypes.util

from fnd.daemon.logs import get_logger

_log = get_logger("fnd")

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
# Allocations from here up get their own mapping: whole large answers and their frames do.
# Not lower: the hello-world path allocates buffers of a few hundred KiB per request, which
# 256 KiB mapped and unmapped each time (+30 us of daemon CPU per request, measured).
MMAP_THRESHOLD = 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024  # free heap top beyond this goes back at once


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def return_large_buffers() -> bool:
    """Fix glibc's mmap and trim thresholds (call once, at daemon start); False if not glibc."""
    if _LIBC is None:
        _log.warning("memory: not glibc, freed buffers may stay in the heap")
        return False
    ok = bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    ok = bool(_LIBC.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and ok
    return ok


def trim() -> None:
    """Give the heap's free pages back to the system (after a burst of large answers)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
