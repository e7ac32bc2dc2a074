def handler(context, event):
    """Which code serves: the VM test tells releases apart by it."""
    return {"release": context.RELEASE}
