"""`fnd serve`: scan the project, start the pool, listen, and handle signals until told to stop."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from fnd import __version__
from fnd.daemon.canary import self_check
from fnd.daemon.config import (
    Config,
    ConfigError,
    load_config,
    unknown_environment,
    unknown_routes,
)
from fnd.daemon.deps_folder import DepsMismatch, installed_folder
from fnd.daemon.http import memory
from fnd.daemon.http.app import FrontEnd
from fnd.daemon.http.listen import ListenError, bind_tcp, make_fd_room, probe_tcp, start_sites
from fnd.daemon.http.timeouts import TimeoutServer
from fnd.daemon.logs import get_logger
from fnd.daemon.ops import otel, socket_claim
from fnd.daemon.ops.admin import not_ready_reason, start_admin_server
from fnd.daemon.ops.control import ControlServer, check_folder, default_control_path
from fnd.daemon.ops.metrics import render_metrics
from fnd.daemon.ops.status import Status
from fnd.daemon.ops.systemd import Notifier, socket_activated, watchdog_loop
from fnd.daemon.ops.watch import Watcher
from fnd.daemon.pool.pool import FunctionsBroken, Pool, PoolError
from fnd.daemon.pool.spawner import ZygoteSpawner
from fnd.daemon.project import Project, ProjectError, route_table_lines, scan_project
from fnd.daemon.sandbox.setup import SandboxSetup, SandboxUnavailable, prepare_sandbox
from fnd.daemon.sandbox.uid_claim import UidRangeTaken
from fnd.daemon.stats import Stats
from fnd.protocol import messages as m
from fnd.protocol.sandbox_config import SandboxConfig

_log = get_logger("fnd")
_STATUS_INTERVAL = 5.0  # seconds between systemd STATUS= updates


class StartupError(Exception):
    """fnd serve cannot start; the message says why (and usually how to fix it)."""


def worker_config(
    config: Config, project: Project, sandbox: SandboxConfig
) -> m.WorkerConfig:
    """The non-secret part of the configuration that workers get at birth via the zygote."""
    deps = str(project.deps) if project.deps is not None else ""
    if deps:  # read-only, carved out of the hidden project root like functions/ and assets/
        sandbox = sandbox | {"readable_paths": [*sandbox["readable_paths"], deps]}
    return {
        "project_dir": str(config.project_dir),
        "deps_dir": deps,
        "functions": {path: str(route.file) for path, route in project.functions.items()},
        "sources": {str(route.file): route.code for route in project.functions.values()
                    if route.code is not None},
        # Runtime.getAssets() lists private assets only, as Twilio's does.
        "assets": {path: str(route.file) for path, route in project.assets.items()
                   if route.visibility == "private"},
        **config.worker_settings(),
        "sandbox": sandbox.copy(),
    }


def read_project(config: Config) -> Project:
    """Scan and parse the project's files: blocking work, no logging (a reload runs it in a
    thread, whose log lines would race the event loop's batched ones). Every problem found is
    collected in ``problems``, none raised: the caller adds the functions' own (preflight) and
    reports them all at once."""
    try:
        project = scan_project(config.project_dir)
    except ProjectError as exc:
        raise StartupError(str(exc)) from None
    problems = list(project.problems)
    if not (config.dev and config.no_signatures) and not config.context_defaults().get(
            "AUTH_TOKEN"):
        problems.extend(f"{route.source}: protected function needs AUTH_TOKEN; set AUTH_TOKEN "
                        "in .env" for route in project.functions.values()
                        if route.visibility == "protected")
    blocking: tuple[str, ...] = ()
    try:
        deps = installed_folder(project.root)
    except DepsMismatch as exc:
        # Not a problem that --allow-broken may serve past: every function could need them.
        deps, blocking = None, (str(exc),)
        problems.append(str(exc))
    return dataclasses.replace(project, deps=deps, problems=tuple(problems), blocking=blocking)


def refused(config: Config, project: Project, problems: list[tuple[str, str]]) -> bool:
    """Whether this generation's problems (the scan's, then the functions') stop it."""
    if project.blocking:
        return True
    if not (project.problems or problems):
        return False
    return config.strict or not config.allows_broken


def all_problems(project: Project, problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The scan's problems, then the functions' (route, reason) as the preflight found them."""
    return [("", problem) for problem in project.problems] + problems


def preflight_checks(project: Project) -> list[m.FunctionCheck]:
    """What a new generation's check loads: each function that parsed (the others are
    already problems of the scan)."""
    return [{"route": path, "file": str(route.file), "needs_handler": route.visibility != "private"}
            for path, route in project.functions.items() if route.error is None]


def _warn_unknown_routes(config: Config, project: Project) -> None:
    for warning in unknown_routes(config, project.functions):
        _log.warning("setting ignored", reason=warning)


def _problem_lines(problems: list[tuple[str, str]]) -> list[str]:
    return [f"{route}: {reason}" if route else reason for route, reason in problems]


def _log_problems(project: Project, problems: list[tuple[str, str]]) -> None:
    for problem in project.problems:
        _log.error("project problem", problem=problem)
    for line in _problem_lines(problems):
        _log.error("function problem", problem=line)


def problems_text(problems: list[tuple[str, str]], project: Project) -> str:
    """Every problem of a refused generation, one per line, and what would serve anyway."""
    lines = _problem_lines(problems)
    hint = "" if project.blocking else " (--allow-broken serves the rest)"
    return f"{len(lines)} problem(s){hint}:\n" + "\n".join("  " + line for line in lines)


class Daemon:
    def __init__(
        self, config: Config, sandbox: SandboxSetup, flags: dict[str, Any], config_file: str | None,
        project_arg: str | Path | None = None,
    ) -> None:
        self.config = config
        self.sandbox = sandbox
        self._flags = flags
        self._config_file = config_file
        # As given, not resolved: a reload follows a symlink switched to a new release.
        self._project_arg = project_arg or config.project_dir
        self.stats = Stats(project=config.instance, spans=otel.spans(config))
        self.project = read_project(config)  # its problems are refused after the preflight
        self.stats.routes_loaded(self.project.functions)
        self.pool = Pool(config, worker_config(config, self.project, sandbox.settings),
                         self.stats, ZygoteSpawner(sandbox), on_fatal=self._fatal)
        self.front = FrontEnd(config, self.project, self.pool, self.stats)
        self.control = ControlServer(config.control or default_control_path(), self._control)
        self._runner: web.ServerRunner | None = None
        self._stop = asyncio.Event()
        self._exit_code = 0
        self._reload_lock = asyncio.Lock()
        self.listen_address = ""
        self._tcp: socket.socket | None = None  # bound before the pool starts (port in use?)
        self.notifier = Notifier()  # takes NOTIFY_SOCKET & co. out of our environment
        self._metrics: web.AppRunner | None = None
        self._serving = False  # startup done: /readyz may say ready
        self._draining = False  # SIGTERM seen: /readyz says not ready from that moment
        self._tasks: list[asyncio.Task[None]] = []
        self.broken: list[str] = list(self.project.problems)  # what the serving code can't run

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self) -> int:
        started = time.monotonic()
        try:  # before any worker starts: a second fnd on the same sockets stops at once
            http_socket = None if socket_activated() else self.config.unix  # systemd's own
            check_folder(self.control.path)  # before it is trusted with the socket
            for path in (self.control.path, http_socket):
                if path:
                    socket_claim.claim(path)
            if self.config.metrics_port is not None:
                probe_tcp(self.config.metrics_host, self.config.metrics_port)
            if not socket_activated() and not self.config.unix:
                self._tcp = bind_tcp(self.config.host, self.config.port)
        except ListenError as exc:
            self.sandbox.cleanup()
            raise StartupError(str(exc)) from None
        except OSError as exc:
            self.sandbox.cleanup()
            raise StartupError(f"cannot listen: {exc}") from None
        for warning in self.sandbox.warnings:
            _log.warning("sandbox degraded", reason=warning, sandbox=self.config.sandbox)
        for warning in unknown_environment(os.environ):
            _log.warning("setting ignored", reason=warning)
        _warn_unknown_routes(self.config, self.project)
        try:
            await self.pool.start()
            problems = await self.pool.preflight(preflight_checks(self.project),
                                                 max(60.0, self.config.timeout),
                                                 dict(self.config.context_defaults()))
            self._broken(self.project, problems)
            await self_check(self.pool, self.config)  # canary invocation; strict: fails closed
        except PoolError as exc:
            if self._tcp is not None:
                self._tcp.close()
            reason = str(exc)
            if isinstance(exc, FunctionsBroken):  # the pool is up: take it down
                await self.pool.stop(drain_timeout=0)
                reason = problems_text(exc.problems, self.project)
            self.sandbox.cleanup()
            raise StartupError(reason) from None
        try:
            await self._listen()
            await self.control.start()
        except OSError as exc:
            await self.pool.stop(drain_timeout=0)
            self.sandbox.cleanup()
            reason = str(exc) if isinstance(exc, ListenError) else f"cannot listen: {exc}"
            raise StartupError(reason) from None
        self._install_signals()
        for line in route_table_lines(self.project, self._base_url()):
            _log.info("route", line=line)
        if self.config.dev:  # edits are picked up by the reload path
            watcher = Watcher(self.config.project_dir, lambda _: self.reload())
            self._background(watcher.run())
            await watcher.watching.wait()  # an edit made once "ready" is out is never missed
        uids = self.sandbox.uids
        _log.info("ready", version=__version__, listen=self.listen_address,
                  control=self.control.path, workers=self.config.workers_min,
                  uids=uids.describe() if uids is not None else None,
                  accounting=self.sandbox.accounting(),
                  startup_ms=round((time.monotonic() - started) * 1000, 1))
        self._serving = True
        self.notifier.ready()
        self._background(self._report_status())
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            self._background(watchdog_loop(self.notifier, interval))
        await self._stop.wait()
        await self._shutdown()
        return self._exit_code

    async def _listen(self) -> None:
        server = TimeoutServer(
            self.front.handle,
            header_timeout=self.config.header_timeout,
            max_connections=self.config.max_connections,
            server_header=self.config.server_header,
            keepalive_timeout=self.config.keepalive_timeout,
            max_line_size=64 * 1024,
            max_field_size=64 * 1024,  # fnd answers 431 itself at its own, lower limits
            max_headers=1024,
            # fnd logs one line per invocation itself. Here, not on ServerRunner: there
            # access_log is silently ignored, as only web.Server passes it on.
            access_log=None,
        )
        self._runner = web.ServerRunner(server, handle_signals=False,
                                        shutdown_timeout=self.config.drain_timeout)
        await self._runner.setup()
        warning = make_fd_room(self.config.max_connections)
        if warning is not None:
            _log.warning("max_connections above the descriptor limit", reason=warning)
        self.listen_address = await start_sites(self._runner, self.config, self._tcp)
        self._tcp = None  # the site owns it now
        if self.config.metrics_port is not None:
            self._metrics = await start_admin_server(
                self.config.metrics_host, self.config.metrics_port, self.metrics_text,
                self.not_ready, self.config.server_header)

    def _broken(self, project: Project, problems: list[tuple[str, str]]) -> None:
        """Log every problem, each on its own line; refuse them unless allowed; keep for
        status."""
        _log_problems(project, problems)
        if refused(self.config, project, problems):
            raise FunctionsBroken(all_problems(project, problems))
        self.broken = _problem_lines(all_problems(project, problems))

    def _base_url(self) -> str:
        return self.listen_address if self.listen_address.startswith("http") else ""

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signo in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signo, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))

    def _fatal(self, reason: str) -> None:
        _log.critical("fatal", reason=reason)
        self._exit_code = 1
        self._stop.set()

    async def _shutdown(self) -> None:
        self._draining = True  # first: a probe during the drain takes this pod out of service
        _log.info("stopping", drain_timeout=self.config.drain_timeout)
        self.notifier.stopping()
        for task in self._tasks:
            task.cancel()
        await self.control.stop()
        if self._runner is not None:
            # Stop accepting; in-flight requests get up to the drain timeout to finish. Idle
            # keep-alive connections close now, busy ones after their answer (which says
            # "Connection: close"), so a proxy sends nothing more on them; a request already
            # on its way is still answered while workers run.
            self.front.draining = True
            for site in list(self._runner.sites):
                await site.stop()
            if self._runner.server is not None:
                self._runner.server.pre_shutdown()
        left = await self.front.handed_over(self.config.drain_timeout)
        await self.pool.stop(drain_timeout=left)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._metrics is not None:  # kept through the drain: /readyz answers "draining"
            await self._metrics.cleanup()
        self.sandbox.cleanup()
        if self.stats.spans is not None:  # the last spans out (a thread: it may wait on I/O)
            await asyncio.get_running_loop().run_in_executor(None, self.stats.spans.close)
        self.notifier.close()
        _log.info("stopped", exit_code=self._exit_code)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def _report_status(self) -> None:
        """Keep systemd's STATUS= line current with the pool's figures."""
        while True:
            self.notifier.status(self.status_line())
            await asyncio.sleep(_STATUS_INTERVAL)

    def status_line(self) -> str:
        pool = self.pool.snapshot()
        workers = pool["workers"]
        return (f"{workers['idle']} idle, {workers['busy']} busy, {workers['starting']} starting "
                f"(min {workers['min']}, max {workers['max']}); queue {pool['queue']}; "
                f"{self.stats.invocations} served")

    # -- reload -------------------------------------------------------------------------
    async def reload(self) -> dict[str, Any]:
        """Re-read config and project, start workers on the new code, retire the old ones."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                # Reading the config and parsing every function is blocking work: in a thread,
                # so requests keep being served by the old generation meanwhile.
                config, project = await asyncio.to_thread(self._read_generation)
                for problem in project.problems:
                    _log.error("project problem", problem=problem)

                def switch() -> None:
                    # Called by the pool in the same step as its generation switch, so no
                    # request pairs the new route table with old workers or the reverse.
                    self.config, self.project = config, project
                    self.front.set_project(config, project)
                    self.stats.routes_loaded(project.functions)

                # A raised workers_max needs more worker uids: held first, or no reload.
                self.sandbox.grow_uids(2 * config.workers_max)
                # Workers of the new generation may read the (maybe new) project folder.
                sandbox = self.sandbox.settings | {"project_dir": str(config.project_dir)}
                problems = await self.pool.reload(
                    config, worker_config(config, project, sandbox), switch=switch,
                    checks=preflight_checks(project), known=all_problems(project, []),
                    blocking=bool(project.blocking) or (config.strict and bool(project.problems)),
                )
            except FunctionsBroken as exc:  # keep serving the old code
                lines = _problem_lines(exc.problems)
                _log.error("reload failed", reason=f"{len(lines)} problem(s)", problems=lines)
                self._reload_failed(lines)
                return {"ok": False, "error": f"{len(lines)} problem(s)", "problems": lines}
            except (StartupError, ConfigError, PoolError, UidRangeTaken, OSError) as exc:
                # Keep serving the old code. These are a reload's ways to fail (a bad project
                # or config, workers that cannot start, uids held by another daemon, files
                # that vanished); anything else is a bug and is not disguised as one of them.
                _log.error("reload failed", reason=str(exc))
                self._reload_failed([str(exc)])
                return {"ok": False, "error": str(exc), "problems": [str(exc)]}
            else:
                lines = _problem_lines(problems)  # the scan's problems included
                for line in lines[len(project.problems):]:
                    _log.error("function problem", problem=line)
                self.broken = lines
                self.front.reload_problems = None  # normal serving resumes
                _warn_unknown_routes(config, project)
                _log.info("reloaded", functions=len(project.functions),
                          assets=len(project.assets))
                return {"ok": True, "generation": self.pool.generation, "problems": lines}
            finally:
                # The old or the new code is serving either way: systemd may leave "reloading".
                self.notifier.ready()
                self.notifier.status(self.status_line())

    def _reload_failed(self, problems: list[str]) -> None:
        """In dev mode, a failed reload's problems answer every request until one succeeds."""
        if self.config.dev:
            self.front.reload_problems = problems

    def _read_generation(self) -> tuple[Config, Project]:
        config = load_config(self._project_arg, self._flags, self._config_file)
        return config, read_project(config)

    # -- control socket -----------------------------------------------------------------
    async def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("cmd")
        if command in ("health", "status"):
            return {"ok": True, **self.status()}
        if command == "reload":
            return await self.reload()
        if command == "metrics":
            return {"ok": True, "text": self.metrics_text()}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def not_ready(self) -> str | None:
        """Why /readyz answers 503 now (None: 200); from memory, as a probe must be cheap."""
        return not_ready_reason(serving=self._serving, draining=self._draining,
                                ready_workers=self.pool.ready_workers(),
                                workers_min=self.config.workers_min)

    def metrics_text(self) -> str:
        return render_metrics(self.stats, self.status(), self.project.functions)

    def status(self) -> Status:
        pool = self.pool.snapshot()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(time.time() - self.stats.started_at, 3),
            "listen": self.listen_address,
            "project": str(self.config.project_dir),
            "sandbox": self.config.sandbox,
            "sandbox_warnings": self.sandbox.warnings,
            "uids": self.sandbox.uid_status(),
            "accounting": self.sandbox.accounting(),
            "workers": pool["workers"],
            "queue": pool["queue"],
            "queue_longest_wait": pool["queue_longest_wait"],
            "per_worker": pool["per_worker"],
            "totals": self.stats.totals(),
            "recent_crashes": self.stats.recent_crashes(),
            "restarts": dict(self.stats.restarts),
            "broken": self.broken,
        }


def serve(project_dir: str | Path, flags: dict[str, Any], config_file: str | None) -> int:
    config = load_config(project_dir, flags, config_file)
    try:
        sandbox = prepare_sandbox(config)  # before the event loop: its read check forks
    except SandboxUnavailable as exc:
        raise StartupError(f"sandbox: {exc}") from None
    _use_uvloop()
    memory.return_large_buffers()  # what slow clients made the daemon hold goes back after
    return asyncio.run(_serve(config, sandbox, flags, config_file, project_dir))


async def _serve(
    config: Config, sandbox: SandboxSetup, flags: dict[str, Any], config_file: str | None,
    project_dir: str | Path,
) -> int:
    try:
        daemon = Daemon(config, sandbox, flags, config_file, project_dir)
    except BaseException:
        sandbox.cleanup()
        raise
    return await daemon.run()


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
