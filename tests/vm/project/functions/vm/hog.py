import mmap

MiB = 1024 * 1024


def handler(context, event):
    """Shared anonymous memory is outside RLIMIT_DATA: only the slot's memory.max stops it."""
    size = 1024 * MiB
    area = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
    for offset in range(0, size, mmap.PAGESIZE):
        area[offset] = 1
    return {"touched_mib": size // MiB}
