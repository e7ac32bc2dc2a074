"""A JSON API in return style: the returned dict is sent as application/json."""


def handler(context, event):
    name = event.get("name", "world")
    return {"greeting": f"hello {name}", "path": context.PATH}
