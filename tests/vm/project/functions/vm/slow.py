import time


def handler(context, event):
    """In flight long enough for the test to stop the service under it."""
    time.sleep(float(event.get("seconds", 4)))
    return {"slept": True}
