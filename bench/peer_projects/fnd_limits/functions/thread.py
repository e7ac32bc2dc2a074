import threading
import time


def handler(context, event, callback):
    # A thread still running at the callback: the worker is not clean, so the daemon kills it
    # (process group) and the zygote forks a replacement, on every request.
    threading.Thread(target=time.sleep, args=(10,), daemon=True).start()
    callback(None, "left a thread behind")
