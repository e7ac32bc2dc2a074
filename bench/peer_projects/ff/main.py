"""hello-world and JSON functions for bench/peers.py (Google functions-framework)."""

import functions_framework


@functions_framework.http
def hello(request):
    return "hello world"


@functions_framework.http
def hello_json(request):
    return {"message": "hello world", "name": request.args.get("name") or "world",
            "items": [1, 2, 3], "ok": True}
