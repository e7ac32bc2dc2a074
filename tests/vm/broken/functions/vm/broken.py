"""A release that must not go live: no `handler` here, so the generation is refused."""


def handle(context, event):
    return {"never": "served"}
