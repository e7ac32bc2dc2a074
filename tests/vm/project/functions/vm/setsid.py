import ctypes
import os
import time

PR_SET_NAME = 15


def handler(context, event):
    """A child in a session of its own, named so the test can find it, then overrun the timeout:
    killing the worker's process group misses the child; only the slot's cgroup.kill gets it."""
    if os.fork() == 0:
        os.setsid()
        ctypes.CDLL(None).prctl(PR_SET_NAME, b"fndvm-orphan", 0, 0, 0)
        while True:
            time.sleep(60)
    time.sleep(600)
    return {"outcome": "not killed"}
