"""The worker's main loop: announce readiness, then run INVOKE frames one at a time.

Called by the zygote in the freshly forked, sandboxed child (on its only thread)::

    serve(cmd_fd, res_fd, config, layers)   # never returns

``cmd_fd`` carries INVOKE frames from the daemon, ``res_fd`` takes READY, RESULT, LOG and
DONE frames; fds 1 and 2 are already the daemon's plain-text capture pipe. The worker exits
0 when ``cmd_fd`` reaches EOF, 2 on a malformed frame (the channel cannot be trusted), 3 on
an internal error (traceback on fd 2) and 70 when the daemon closed the result pipe.
Everything a function may need is imported here, before the sandbox can make the library
unreadable.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from typing import Any, NoReturn, cast

from fnd.protocol import messages as m
from fnd.protocol.frames import BlockingFrameReader, ProtocolError
from fnd.worker import fork
from fnd.worker.environ import Environment
from fnd.worker.invoke import Invoker, RunningCall, Services
from fnd.worker.leftovers import become_subreaper
from fnd.worker.loader import FunctionError, Loader, use_deps
from fnd.worker.output import Channel, Output, write_plain
from fnd.worker.received_config import ReceivedConfig
from fnd.worker.runtime import Runtime
from fnd.worker.serialize import describe
from fnd.worker.twilio_api import Twilio

EXIT_EOF = 0
EXIT_PROTOCOL = 2
EXIT_INTERNAL = 3

_log = logging.getLogger("fnd.worker")


def serve(cmd_fd: int, res_fd: int, config: m.WorkerConfig, layers: dict[str, str],
          clear_refs: int | None = None) -> NoReturn:
    """The worker's life: invocations until EOF. ``clear_refs``: /proc/self/clear_refs,
    opened before the sandbox made it unwritable, for per-invocation peak RSS."""
    for fd in (cmd_fd, res_fd):
        os.set_inheritable(fd, False)  # never leak the protocol into a function's children
    environment = Environment()  # nothing inherited from the zygote; the project's come per call
    settings = ReceivedConfig.from_config(config)
    use_deps(settings.deps_dir)
    channel = Channel(res_fd, settings.max_output)
    output = Output(channel)
    output.install((cmd_fd, res_fd))
    loader = Loader({"Twilio": Twilio, "Runtime": Runtime}, settings)
    Runtime.configure(settings.functions, settings.assets, loader)
    services = Services(channel, output, settings, loader, Runtime, environment)
    invoker = Invoker(services, clear_refs)
    threading.excepthook = invoker.thread_excepthook

    ready: m.Ready = {"t": m.READY, "pid": os.getpid(), "layers": layers}
    channel.send(ready)
    try:
        become_subreaper()
    except OSError as exc:
        _log.warning("orphaned grandchildren will not count as leftovers: %s", exc)

    reader = BlockingFrameReader(cmd_fd)
    parent = fork.Parent(os.getpid(), cmd_fd, reader, output, invoker, clear_refs, _check_invoke)
    while True:
        try:
            message = reader.read()
            if message is None:
                _exit(output, EXIT_EOF)
            if message["t"] == m.PREFLIGHT:
                _preflight(message, loader, channel, environment)
                continue
            if message["t"] == m.FORK:  # isolation = "invocation": the call runs in a child
                fork.serve(message, parent)
                continue
            invoke = _check_invoke(message)
        except ProtocolError as exc:
            _log.error("protocol error on the command pipe: %s", exc)
            _exit(output, EXIT_PROTOCOL)
        try:
            RunningCall(invoke, invoker).run()
        except BaseException:  # noqa: B036 - a bug of ours: say so on fd 2, then die loudly
            write_plain(2, "fnd worker: internal error\n" + traceback.format_exc())
            os._exit(EXIT_INTERNAL)


def _preflight(message: m.Message, loader: Loader, channel: Channel,
               environment: Environment) -> None:
    """Load every function of the generation and report what cannot run, before traffic.

    The daemon kills this worker afterwards: a bootstrap may have left anything behind.
    """
    context = message.get("context")
    if isinstance(context, dict):  # a bootstrap may read the project's variables, as in a call
        environment.apply(context)
    problems: list[list[str]] = []
    for check in _function_checks(message):
        route, file = check["route"], check["file"]
        try:
            if check["needs_handler"]:
                loader.handler(route, file)
            else:
                loader.module(route, file)
        except FunctionError as exc:
            problems.append([route, str(exc)])
        except (Exception, SystemExit) as exc:  # a private module's bootstrap
            shown = loader.display_path(file)
            problems.append([route, f"error loading {shown}: {describe(exc)}"])
    reply: m.PreflightResult = {"t": m.PREFLIGHT_RESULT, "problems": problems}
    channel.send(reply)


def _function_checks(message: m.Message) -> list[m.FunctionCheck]:
    """A PREFLIGHT's functions as the FunctionChecks they are; ProtocolError otherwise."""
    checks = message.get("functions")
    if not isinstance(checks, list):
        raise ProtocolError("preflight frame: functions must be a list")
    for check in checks:
        if not (isinstance(check, dict) and isinstance(check.get("route"), str)
                and isinstance(check.get("file"), str)
                and isinstance(check.get("needs_handler"), bool)):
            raise ProtocolError("preflight frame: a function is not {route, file, needs_handler}")
    return checks


def _check_invoke(message: m.Message) -> m.Invoke:
    """``message`` as the INVOKE it is; ProtocolError unless it is a well-formed one."""
    if message["t"] != m.INVOKE:
        raise ProtocolError(f"unexpected {message['t']!r} frame; expected {m.INVOKE!r}")
    function = message.get("function")
    fields: dict[str, Any] = {
        "id": message.get("id"),
        "function.name": function.get("name") if isinstance(function, dict) else None,
        "function.file": function.get("file") if isinstance(function, dict) else None,
    }
    for name, value in fields.items():
        if not isinstance(value, str):
            raise ProtocolError(f"invoke frame: {name} must be a string")
    for name in ("event", "context"):
        if not isinstance(message.get(name), dict):
            raise ProtocolError(f"invoke frame: {name} must be a map")
    timeout = message.get("timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ProtocolError("invoke frame: timeout must be a number")
    trace = message.get("trace")
    if not (isinstance(trace, dict) and isinstance(trace.get("traceparent"), str)
            and isinstance(trace.get("tracestate"), str)):
        raise ProtocolError("invoke frame: trace must be a {traceparent, tracestate} map")
    return cast(m.Invoke, message)


def _exit(output: Output, code: int) -> NoReturn:
    output.flush()
    # os._exit: no atexit handlers or buffered state inherited from the zygote may run.
    os._exit(code)
