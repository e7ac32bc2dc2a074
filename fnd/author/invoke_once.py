"""`fnd invoke PATH`: run one function once through the real daemon and print the response.

A real `fnd serve` (zygote, one sandboxed worker, the project's fnd.toml and .env) on a unix
socket gets one HTTP request. By default it is the project's warm daemon
(:mod:`fnd.author.warm`): started by the first call, reused (reloaded or restarted when the
project changed) by the next ones, gone after ``--keep-warm`` idle minutes or
``fnd invoke --stop``; ``--keep-warm 0`` starts one for this call only and stops it. The
response goes to stdout (status line, headers, blank line, body); what the function printed
or logged goes to stderr. Exit status: 0 below 500, 1 for a 5xx or when the daemon cannot
start.

Decisions: the method is GET without a body and POST with ``-d``/``--json`` (as curl);
``PATH`` may be the route (``/sms/reply``) or the function's file (``functions/sms/reply.py``);
requests to protected functions are signed with the project's AUTH_TOKEN for the URL the
daemon will check (``public_url`` if configured), so they run as a Twilio webhook would.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fnd.author import client, warm
from fnd.author.launcher import LaunchError, Line, ServeProcess
from fnd.daemon.config import Config, ConfigError, load_config
from fnd.daemon.project import scan_project

EXIT_OK = 0
EXIT_FAILED = 1


@dataclass(frozen=True)
class InvokeArgs:
    project: Path
    path: str
    data: Sequence[str] = ()  # "key=value" form fields
    json_body: str | None = None
    method: str | None = None
    headers: Sequence[str] = ()  # "Name: value"
    dev: bool = False
    timeout: float | None = None
    keep_warm: float = warm.IDLE_DEFAULT / 60  # minutes; 0: a daemon for this call only


class UsageError(Exception):
    """The arguments cannot make a request; the message says which one."""


def invoke(args: InvokeArgs, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        config = load_config(args.project)
        request = _request(args, config)
    except (ConfigError, UsageError) as exc:
        print(f"fnd invoke: {exc}", file=err)
        return EXIT_FAILED
    serve_args = ["--workers-min", "1", "--workers-max", "1"]
    if args.dev:
        serve_args.append("--dev")
    if args.timeout is not None:
        serve_args += ["--timeout", str(args.timeout)]
    try:
        if args.keep_warm > 0:
            return _invoke_warm(args, serve_args, request, config, out, err)
        with ServeProcess(config.project_dir, serve_args, unix=True) as daemon:
            reply = _send(daemon.listen, request, config)
            logged = daemon.invocation(reply.invocation_id)  # logged after its output
            return _report(reply, logged, daemon.output_of(reply.invocation_id), out, err)
    except LaunchError as exc:
        print(f"fnd invoke: fnd serve cannot start: {exc}", file=err)
        return EXIT_FAILED


def stop_warm(project: Path, err: TextIO = sys.stderr) -> int:
    """`fnd invoke --stop`: end the project's warm daemon, if one runs."""
    folder = warm.state_folder(project)
    with warm.locked(folder):
        if not warm.stop(folder):
            print(f"fnd invoke: no warm daemon for {project.resolve()}", file=err)
        warm.remove(folder)
    return EXIT_OK


def _invoke_warm(args: InvokeArgs, serve_args: list[str], request: client.Request,
                 config: Config, out: TextIO, err: TextIO) -> int:
    folder = warm.state_folder(config.project_dir)
    with warm.locked(folder):
        for attempt in (1, 2):
            daemon = warm.ensure(config.project_dir, serve_args, idle=args.keep_warm * 60)
            offset = daemon.log_size()
            try:
                reply = _send(daemon.listen, request, config)
                break
            except (ConnectionError, FileNotFoundError):  # it ended since the check
                warm.stop(folder)
                if attempt == 2:
                    raise
        logged = daemon.invocation(offset, reply.invocation_id)  # logged after its output
        output = [line for line in daemon.lines_since(offset)
                  if line.get("event") == "function output"
                  and line.get("invocation_id") == reply.invocation_id]
        warm.touch(folder)
    return _report(reply, logged, output, out, err)


def _send(listen: str, request: client.Request, config: Config) -> client.Reply:
    token = config.context_defaults().get("AUTH_TOKEN")
    route = scan_project(config.project_dir).lookup(request.target.split("?", 1)[0])
    if route is not None and route.visibility == "protected" and token:
        base = config.public_url or "http://" + client.host_header(listen)
        client.sign(request, token, base)
    return client.send(listen, request, timeout=config.timeout + 30)


def _report(reply: client.Reply, logged: Line | None, output: list[Line], out: TextIO,
            err: TextIO) -> int:
    for line in output:
        print(f"[{line.get('stream', 'out')}] {line.get('line')}", file=err)
    if logged is not None and reply.status >= 500 and logged.get("reason"):
        # A production 500 body leaves the cause out; the author running this wants it.
        print(f"[reason] {logged['reason']}", file=err)
    _print_reply(reply, out)
    return EXIT_FAILED if reply.status >= 500 else EXIT_OK


def _print_reply(reply: client.Reply, out: TextIO) -> None:
    print(f"HTTP {reply.status} {reply.reason}", file=out)
    for name, value in reply.headers.items():
        print(f"{name}: {value}", file=out)
    print(file=out)
    out.flush()
    if not reply.body:
        return
    try:
        text = reply.body.decode("utf-8")
    except UnicodeDecodeError:
        buffer = getattr(out, "buffer", None)
        if buffer is None:
            print(f"<{len(reply.body)} bytes of binary data>", file=out)
        else:
            buffer.write(reply.body)
            buffer.flush()
        return
    print(text, file=out, end="" if text.endswith("\n") else "\n")


def _request(args: InvokeArgs, config: Config) -> client.Request:
    path = _route_path(args.path, config.project_dir)
    data = [_field(item) for item in args.data] if args.data else None
    body: Any = None
    if args.json_body is not None:
        try:
            body = json.loads(args.json_body)
        except ValueError as exc:
            raise UsageError(f"--json is not valid JSON: {exc}") from None
    headers = dict(_header(item) for item in args.headers)
    has_body = data is not None or body is not None
    method = args.method or ("POST" if has_body else "GET")
    try:
        return client.build(method, path, data=data, json=body, headers=headers)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _route_path(given: str, project_dir: Path) -> str:
    """A route path; a function file (``functions/x.py``) is mapped to its route."""
    if given.endswith(".py"):
        file = Path(given)
        candidates = [file, project_dir / file] if not file.is_absolute() else [file]
        for candidate in candidates:
            if candidate.is_file():
                real = candidate.resolve()
                for route in scan_project(project_dir).functions.values():
                    if route.file == real:
                        return route.path
                raise UsageError(f"{given} is not a function of {project_dir}")
    path, _, query = given.partition("?")
    path = "/" + path.lstrip("/")
    return f"{path}?{query}" if query else path


def _field(item: str) -> tuple[str, str]:
    key, eq, value = item.partition("=")
    if not eq or not key:
        raise UsageError(f"-d {item!r}: expected key=value")
    return key, value


def _header(item: str) -> tuple[str, str]:
    name, colon, value = item.partition(":")
    if not colon or not name.strip():
        raise UsageError(f"-H {item!r}: expected 'Name: value'")
    return name.strip(), value.strip()
