"""The worker side of fnd: everything that runs inside a forked, sandboxed worker process.

``fnd.worker.loop.serve`` is the entry point the zygote calls after fork; ``fnd.worker.api`` is the
documented module function authors import for type checking (``Twilio``, ``Runtime``,
``Context``, ``Callback``). Everything else here is private to the worker.
"""
