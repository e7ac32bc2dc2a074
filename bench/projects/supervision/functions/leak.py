import threading
import time


def handler(context, event, callback):
    # A thread left running after the answer: the daemon kills this worker and forks another.
    threading.Thread(target=time.sleep, args=(10,), daemon=True).start()
    callback(None, "leaked")
