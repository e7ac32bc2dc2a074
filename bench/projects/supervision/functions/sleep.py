import time


def handler(context, event, callback):
    time.sleep(float(event.get("ms", "50")) / 1000)
    callback(None, "slept")
