def handler(context, event, callback):
    callback(None, "hello world")
