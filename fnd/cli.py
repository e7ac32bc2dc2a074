"""The `fnd` command: a thin layer over the daemon's modules."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import shlex
import sys
from typing import Any

from fnd import __version__
from fnd.daemon.config import ConfigError
from fnd.daemon.config_cli import add_flags, flag_values
from fnd.daemon.logs import configure_logging, get_logger

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNREACHABLE = 4


def _did_you_mean(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> str:
    """" (did you mean --workers-min?)" for the first unknown flag close to one of the
    command's own."""
    options: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            options = list(action.choices[command]._option_string_actions)
    for flag in unknown:
        if flag.startswith("--"):
            close = difflib.get_close_matches(flag.split("=", 1)[0], options, n=1)
            if close:
                return f" (did you mean {close[0]}?)"
    return ""


def _daemon_choice(command: argparse.ArgumentParser) -> None:
    """Which daemon a control command talks to: an instance NAME, or --control PATH."""
    command.add_argument("name", nargs="?", metavar="NAME",
                         help="instance name (fnd@NAME.service): /run/fnd/NAME/control.sock")
    command.add_argument("--control", metavar="PATH", help="control socket path")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fnd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fnd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a project's functions and assets")
    serve.add_argument("project", nargs="?", default=".", help="project folder (default: .)")
    serve.add_argument("--config", metavar="FILE", help="fnd.toml to use instead of the project's")
    add_flags(serve)

    status = commands.add_parser("status", help="show a running daemon's pool and totals")
    _daemon_choice(status)
    status.add_argument("--json", action="store_true", help="print JSON")

    reload = commands.add_parser("reload", help="re-read the project; returns when done")
    _daemon_choice(reload)

    metrics = commands.add_parser("metrics", help="print Prometheus metrics of a running daemon")
    _daemon_choice(metrics)

    deps = commands.add_parser(
        "deps", help="install the project's requirements.txt for its workers (pip)")
    deps.add_argument("project", nargs="?", default=".", help="project folder (default: .)")
    deps.add_argument("--prune", action="store_true",
                      help="remove installed folders the current requirements.txt does not use")
    deps.add_argument("--index-url", metavar="URL",
                      help="the package index pip uses (requirements.txt may not name one)")
    deps.add_argument("--extra-index-url", metavar="URL", action="append", default=[],
                      help="another package index (repeatable)")
    deps.add_argument("--find-links", metavar="DIR|URL", action="append", default=[],
                      help="a folder or page of package files (repeatable)")
    deps.add_argument("--trusted-host", metavar="HOST", action="append", default=[],
                      help="a host pip may reach over plain http or bad TLS (repeatable)")
    deps.add_argument("--allow-sdist", action="store_true",
                      help="build packages published only as source (runs their build "
                           "code, in the build sandbox); default: wheels only")

    _deploy_parser(commands)

    init = commands.add_parser("init", help="create a new function project in DIR")
    init.add_argument("dir", help="folder to create (must be new or empty)")

    invoke = commands.add_parser(
        "invoke", help="run one function once through the real daemon and print the response")
    invoke.add_argument("path", nargs="?",
                        help="route (/sms/reply) or function file (functions/x.py)")
    invoke.add_argument("-d", "--data", action="append", default=[], metavar="KEY=VALUE",
                        help="form field (repeatable); makes the request a POST")
    invoke.add_argument("--json", metavar="BODY", help="JSON body; makes the request a POST")
    invoke.add_argument("-X", "--method", help="HTTP method (default GET, POST with a body)")
    invoke.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="request header (repeatable)")
    invoke.add_argument("--project", default=".", metavar="DIR",
                        help="project folder (default: .)")
    invoke.add_argument("--dev", action="store_true", help="tracebacks in 500 bodies")
    invoke.add_argument("--timeout", type=float, help="time limit for this invocation, seconds")
    invoke.add_argument("--keep-warm", type=float, default=10.0, metavar="MINUTES",
                        help="reuse the project's warm daemon, which exits after MINUTES "
                             "without a call (default 10); 0: a daemon for this call only")
    invoke.add_argument("--stop", action="store_true",
                        help="stop the project's warm daemon and exit")
    return parser


def _deploy_parser(commands: Any) -> None:
    from fnd.ctl.deploy import DEFAULT_ROOT, DESCRIPTION

    deploy = commands.add_parser(
        "deploy", help="serve a release folder: check, switch the project symlink, reload",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="fnd deploy [options] RELEASE_DIR [NAME]\n       fnd deploy --rollback "
              "[options] [NAME]")
    deploy.add_argument("release", nargs="?", metavar="RELEASE_DIR",
                        help="the release folder to serve (functions/, assets/, .env 0600)")
    _daemon_choice(deploy)
    deploy.add_argument("--rollback", action="store_true",
                        help="serve the previous release again (ROOT/LINK.previous)")
    deploy.add_argument("--root", default=DEFAULT_ROOT, metavar="DIR",
                        help=f"the folder holding the symlink (default: {DEFAULT_ROOT})")
    deploy.add_argument("--link", metavar="LINK",
                        help="the symlink's name in ROOT (default: NAME, else project)")
    deploy.add_argument("--no-reload", action="store_true",
                        help="only switch the symlink: for a daemon not started yet "
                             "(first install), which serves the release when it starts")


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code. A reader that stops early (``fnd metrics | head``)
    ends the output quietly: the command keeps its own exit code (0 when it was writing
    when the pipe closed), with no BrokenPipeError traceback."""
    code = EXIT_OK
    try:
        code = _command(argv)
        sys.stdout.flush()  # small outputs meet the closed pipe here, after the command
    except BrokenPipeError:
        _stdout_to_devnull()
    return code


def _stdout_to_devnull() -> None:
    """Python's recipe (library/signal, "Note on SIGPIPE"): what is still buffered for
    stdout goes nowhere, so the flush at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _command(argv: list[str] | None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}"
                     f"{_did_you_mean(parser, args.command, unknown)}")
    if args.command == "serve":
        return _serve(args)
    if args.command == "deploy" and args.rollback and args.name is None:
        args.name, args.release = args.release, None  # `--rollback NAME`: no release given
    if args.command == "deploy" and (args.release is None) != args.rollback:
        parser.error("deploy: give RELEASE_DIR, or --rollback (not both)")
    if args.command in ("status", "reload", "metrics", "deploy"):
        from fnd.ctl.instances import InstanceError, control_path

        try:
            args.control_path = control_path(args.name, args.control)
        except InstanceError as exc:
            parser.error(str(exc))
    if args.command == "status":
        return _status(args)
    if args.command == "reload":
        return _reload(args)
    if args.command == "metrics":
        return _metrics(args)
    if args.command == "deploy":
        return _deploy(args)
    if args.command == "init":
        return _init(args)
    if args.command == "deps":
        return _deps(args)
    if args.command == "invoke":
        return _invoke(args)
    return EXIT_USAGE


def _deploy(args: argparse.Namespace) -> int:
    from fnd.ctl.deploy import DeployArgs, deploy

    return deploy(DeployArgs(
        release=args.release, rollback=args.rollback, name=args.name,
        control=args.control_path, root=args.root, link=args.link, reload=not args.no_reload))


def _init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fnd.author.scaffold import ScaffoldError, create_project, test_command

    target = Path(args.dir)
    try:
        files = create_project(target)
    except (ScaffoldError, OSError) as exc:
        print(f"fnd init: {exc}", file=sys.stderr)
        return 1
    for file in files:
        print(f"created {file}")
    folder = shlex.quote(str(target))
    print(f"\nNext: cd {folder} && cp .env.example .env && fnd serve --dev")
    print(f"Tests: cd {folder} && {test_command()}")
    return EXIT_OK


def _deps(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fnd.ctl.deps import DepsError, install, prune
    from fnd.ctl.deps_requirements import Sources

    sources = Sources(
        index_url=args.index_url, extra_index_urls=tuple(args.extra_index_url),
        # a folder given relative to where the operator stands, made absolute for pip
        find_links=tuple(link if "://" in link else os.path.abspath(link)
                         for link in args.find_links),
        trusted_hosts=tuple(args.trusted_host), allow_sdist=args.allow_sdist)
    try:
        if args.prune:
            prune(Path(args.project))
        else:
            install(Path(args.project), sources=sources)
    except (DepsError, OSError) as exc:
        message = str(exc)
        if not isinstance(exc, DepsError) and exc.filename:  # e.g. a project we may not write
            message = f"{exc.filename}: {exc.strerror or exc}"
        first, _, details = message.partition("\n")
        if details:  # pip's own words first, the verdict last where the eye lands
            print(details, file=sys.stderr)
        print(f"fnd deps: {first}", file=sys.stderr)
        return 1
    return EXIT_OK


def _invoke(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fnd.author.invoke_once import InvokeArgs, invoke, stop_warm

    if args.stop:
        return stop_warm(Path(args.project))
    if args.path is None:
        print("fnd invoke: give the route or function file to run (or --stop)", file=sys.stderr)
        return 2
    return invoke(InvokeArgs(
        project=Path(args.project), path=args.path, data=args.data, json_body=args.json,
        method=args.method, headers=args.header, dev=args.dev, timeout=args.timeout,
        keep_warm=args.keep_warm,
    ))


def _serve(args: argparse.Namespace) -> int:
    from fnd.daemon.ops.pid1 import become_init_if_pid1

    become_init_if_pid1()  # first: as PID 1, this process stays the init, the child serves
    from fnd.daemon.server import StartupError, serve

    flags = flag_values(args)
    log_format = args.log_format or ("console" if args.dev else None)
    configure_logging(log_format)
    log = get_logger("fnd")
    try:
        return serve(args.project, flags, args.config)
    except (ConfigError, StartupError) as exc:
        log.error("cannot start", reason=str(exc))
        return 1
    except KeyboardInterrupt:
        return 0


def _control_request(args: argparse.Namespace, payload: dict[str, Any]) -> dict[str, Any] | None:
    from fnd.ctl.client import request
    from fnd.ctl.instances import hint

    path = args.control_path
    try:
        return asyncio.run(request(path, payload))
    except (OSError, ValueError, TimeoutError) as exc:
        print(f"fnd: control socket {path} not reachable: {exc}{hint(args.name, args.control)}",
              file=sys.stderr)
        return None


def _status(args: argparse.Namespace) -> int:
    from fnd.ctl.status_view import (
        as_status,
        collect_process_figures,
        health_exit_code,
        health_problems,
        render_status,
    )

    answer = _control_request(args, {"cmd": "status"})
    if answer is None:
        return EXIT_UNREACHABLE
    answer["per_worker"] = collect_process_figures(answer.get("per_worker", []))
    status = as_status(answer)
    if args.json:
        reasons = health_problems(status)  # the same verdict as the exit code
        answer["health"] = "degraded" if reasons else "ok"
        answer["health_reasons"] = reasons
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        print(render_status(status))
    return health_exit_code(status)


def _metrics(args: argparse.Namespace) -> int:
    answer = _control_request(args, {"cmd": "metrics"})
    if answer is None:
        return EXIT_UNREACHABLE
    sys.stdout.write(str(answer.get("text", "")))
    return EXIT_OK


def _reload(args: argparse.Namespace) -> int:
    answer = _control_request(args, {"cmd": "reload"})
    if answer is None:
        return EXIT_UNREACHABLE
    if not answer.get("ok"):
        print(f"fnd: reload failed: {answer.get('error')}", file=sys.stderr)
        for problem in answer.get("problems") or []:
            print(f"  {problem}", file=sys.stderr)
        print("fnd: the previous code keeps serving", file=sys.stderr)
        return 1
    print(f"reloaded (generation {answer.get('generation')})")
    for problem in answer.get("problems") or []:
        print(f"  not served: {problem}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
