def handler(context, event, callback):
    callback(None, {"message": "hello world", "name": event.get("name") or "world",
                    "items": [1, 2, 3], "ok": True})
