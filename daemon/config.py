"""One typed, frozen configuration: flags > FND_* environment > fnd.toml > defaults.

Each setting is declared once, as a field of `Config`: its type and default are the field's,
and `setting(...)` adds its help, whether `fnd serve` has a flag for it, its choices and bounds,
and whether workers receive it. Its `fnd.toml` key is the field's name and its environment
variable `FND_<NAME>`. The loader, the validation here, the `fnd serve` flags and the README
table (`fnd.daemon.config_cli`) and what a worker receives (`Config.worker_settings`) are all
derived from these fields; tests/daemon/test_config_declared_once.py fails on a second copy.

The project's variables (`.env` and `[env]`) are secrets: they live in `Config.env`, are sent to
workers per invocation, and never reach the zygote or a log line.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import typing
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, cast

from dotenv import dotenv_values

from fnd.daemon.frame_room import frame_problem
from fnd.daemon.http.hostname import url_host
from fnd.protocol.messages import WorkerSettings


class ConfigError(Exception):
    """A setting is missing, malformed or contradictory; the message names it."""


_MIB = 1024 * 1024
_T = TypeVar("_T")


@dataclass(frozen=True)
class Setting:
    """What one `Config` field declares; `kind` is int, float, bool, str or tuple (of str)."""

    name: str
    kind: type
    optional: bool  # None is a value: "not set"
    default: Any
    help: str
    flag: bool = False  # `fnd serve --name-with-dashes`
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    exclusive: bool = False  # among the flags of which at most one may be given (where to listen)
    positive: bool = False  # must be above 0
    minimum: int | None = None
    maximum: int | None = None
    zero_is_off: bool = False  # 0 turns the feature off (said when a value is below minimum)
    worker: bool = False  # every worker receives it, under this name (WorkerSettings)
    unit: str = ""  # shown after the default in the README
    shown: str | None = None  # the README's default, where the value alone says too little

    @property
    def variable(self) -> str:
        return "FND_" + self.name.upper()

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-")

    def problem(self, value: Any) -> str | None:
        """Why `value` is refused by this setting's choices or bounds (None: it is not)."""
        if value is None:
            return None
        if self.choices and value not in self.choices:
            allowed = " or ".join(repr(choice) for choice in self.choices)
            return f"{self.name} must be {allowed}, got {value!r}"
        if self.positive and value <= 0:
            return f"{self.name} must be positive"
        if self.maximum is not None and not (self.minimum or 0) <= value <= self.maximum:
            return f"{self.name} {value} is out of range"
        if self.minimum is not None and value < self.minimum:
            if self.minimum:
                return f"{self.name} must be at least {self.minimum}"
            return f"{self.name} must be 0 (off) or positive" if self.zero_is_off \
                else f"{self.name} must not be negative"
        return None


def setting(default: _T, help: str, **declared: Any) -> _T:
    """A `Config` field that is a setting: its default, its help and the rest of its
    `Setting` (name, kind and default are filled in from the field itself)."""
    return field(default=default, metadata={"setting": (help, declared)})


@dataclass(frozen=True)
class FunctionSettings:
    """Per-function overrides from `[functions."/path"]` in fnd.toml."""

    timeout: float | None = None
    isolation: str | None = None


@dataclass(frozen=True)
class Config:
    project_dir: Path
    host: str = setting("127.0.0.1", "address to bind", flag=True)
    port: int = setting(3000, "TCP port to listen on; 0 picks a free one",
                        flag=True, exclusive=True, minimum=0, maximum=65535)
    unix: str | None = setting(None, "listen on this unix socket instead of TCP",
                               flag=True, metavar="PATH", exclusive=True)
    control: str | None = setting(
        None, "the 0600 control socket of `fnd status` / `fnd reload`", flag=True,
        metavar="PATH", shown="`$RUNTIME_DIRECTORY/control.sock`, else `/run/fnd/control.sock` "
                              "(root) or `/tmp/fnd-$UID/control.sock`")
    metrics_port: int | None = setting(
        None, "also serve `/metrics` (Prometheus), `/livez` and `/readyz` on "
        "`metrics_host`:PORT", flag=True, metavar="PORT")
    metrics_host: str = setting(
        "127.0.0.1", "address of the `metrics_port` listener; it has no authentication (the "
        "image sets 0.0.0.0 for a pod's probes and scraper)", flag=True, metavar="ADDRESS")
    workers_min: int = setting(2, "warm workers kept at all times", flag=True, minimum=1)
    workers_max: int = setting(4, "most workers under load", flag=True)
    queue_max: int = setting(
        1024, "calls waiting beyond the pool (FIFO) at most; one more gets 503 with `Retry-After`")
    queue_timeout: float = setting(
        10.0, "longest wait in that queue; beyond it 503 with `Retry-After`", unit="s",
        positive=True)
    timeout: float = setting(5.0, "time limit per invocation; 504 at the limit", flag=True,
                             unit="s", positive=True)
    idle_timeout: float = setting(
        60.0, "idle workers above `workers_min` retire after this long", unit="s", positive=True)
    drain_timeout: float = setting(
        30.0, "on SIGTERM, calls in flight may finish for this long", unit="s", positive=True)
    header_timeout: float = setting(
        10.0, "a request head must be complete this long after its first byte (or the "
        "connection's start); else 408 and the connection is closed",
        flag=True, metavar="SECONDS", unit="s", positive=True)
    keepalive_timeout: float = setting(
        15.0, "close a connection idle this long between requests: no request, no byte of the "
        "next one", flag=True, metavar="SECONDS", unit="s", positive=True)
    body_timeout: float = setting(
        60.0, "a request body must be complete this long after its head (in total, however it "
        "trickles); else 408 and the connection is closed", unit="s", positive=True)
    send_timeout: float = setting(
        60.0, "a client that takes nothing of a large answer for this long is cut off and the "
        "answer's buffers freed", unit="s", positive=True)
    max_connections: int = setting(
        1000, "client connections at most; one more gets a minimal 503 and is closed at once "
        "(worst case with the defaults: 1000 x 64 KiB of small answers in transports)",
        positive=True)
    max_buffered_mb: int = setting(
        64, "answers over 64 KiB held for clients, across all connections, at most; one more "
        "gets 503 with `Retry-After` (at most 64 MB of buffered answers)", unit="MB",
        positive=True)
    # Recycling bounds what one worker's code can leave behind (docs/security.md).
    max_requests: int = setting(10000, "recycle a worker after this many calls; 0: never",
                                minimum=0, zero_is_off=True)
    max_requests_jitter: int = setting(
        1000, "up to this many calls added at random to `max_requests` per worker, so that "
        "workers do not all recycle together", minimum=0, zero_is_off=True)
    max_worker_age: float = setting(3600.0, "recycle a worker older than this; 0: never",
                                    unit="s", minimum=0, zero_is_off=True)
    isolation: str = setting(
        "worker", "`invocation`: every call in a process of its own, forked from a warm "
        "worker (also per function)", flag=True, choices=("worker", "invocation"))
    allow_broken: bool = setting(
        False, "serve the functions that load even when others cannot (always on with --dev); "
        "otherwise each problem is printed and nothing starts or reloads", flag=True)
    max_rss_mb: int = setting(
        0, "recycle a worker whose RSS after a call is above this many MiB; 0: never",
        shown="0 (off)")
    dev: bool = setting(
        False, "development mode: reload on edits, console logs, tracebacks in 500 bodies",
        flag=True, worker=True)
    strict: bool = setting(False, "refuse to start if any function or asset has a problem",
                           flag=True)
    no_signatures: bool = setting(
        False, "with --dev: skip X-Twilio-Signature checks (warns per request)", flag=True)
    log_format: str | None = setting(
        None, "`json` or `console`; unset: console in a terminal or with --dev, else json",
        flag=True, choices=("json", "console"))
    max_request_body: int = setting(
        1 * _MIB, "largest request body accepted, bytes (413 beyond); a value one 8 MiB worker "
        "frame cannot carry (about 3.4 MiB) is refused at start",
        flag=True, metavar="BYTES", shown="1 MiB", minimum=0)
    max_response_body: int = setting(
        4 * _MIB, "largest response body a function may send, bytes (500 beyond); at most "
        "about 7.9 MiB", flag=True, metavar="BYTES", shown="4 MiB", minimum=0, worker=True)
    max_header_bytes: int = setting(
        15 * 1024, "largest head of a request (431 beyond) or of a response (500 beyond), bytes",
        minimum=0, worker=True)
    max_header_count: int = setting(
        90, "most header fields of a request (431 beyond) or of a response (500 beyond)",
        minimum=0, worker=True)
    cors: bool = setting(True, "fnd answers `OPTIONS` itself (204 and CORS headers)")
    server_header: str = setting(
        "fnd", "the `Server` header of every answer (no versions); empty: none is sent",
        flag=True, metavar="VALUE")
    cookie_secure: bool = setting(
        True, "cookies a function sets get `HttpOnly` and `Secure` unless they say otherwise",
        worker=True)
    public_url: str | None = setting(
        None, "URL used to check signatures; its host is `context.DOMAIN_NAME`")
    instance_name: str | None = setting(
        None, "the `project` field of every invocation log line", metavar="NAME",
        shown="the project folder's name")
    otlp_endpoint: str | None = setting(
        None, "with the `fnd[otel]` extra: export one OpenTelemetry span per invocation to "
        "this OTLP/HTTP traces URL", metavar="URL")
    twilio_api_base_url: str | None = setting(
        None, "send `getTwilioClient()` requests to a compatible server instead of Twilio",
        worker=True)
    trusted_proxies: tuple[str, ...] = setting(
        ("unix",), "peers whose `X-Forwarded-*` headers are believed (comma-separated in the "
        "environment)")
    sandbox: str = setting(
        "strict", "`permissive` starts even when a protection cannot be applied (with a "
        "warning)", choices=("strict", "permissive"))
    accounting: str = setting(
        "auto", "what holds a worker's processes together: `cgroup` (refuse to start strict "
        "without a writable one), `uid` (the worker's uid and rlimits), `auto` (a cgroup when "
        "one can be written, else uid; docs/sandbox.md#uid-accounting)",
        choices=("auto", "cgroup", "uid"))
    memory_mb: int = setting(256, "memory limit of each worker", unit="MiB", minimum=0)
    scratch_mb: int = setting(
        64, "size of each worker's scratch folder (its own tmpfs; a write beyond it fails with "
        "`ENOSPC`); 0: no limit", unit="MiB", minimum=0)
    max_output: int = setting(
        1 * _MIB, "function output logged per invocation, bytes; the rest is dropped with one "
        "warning; 0: no limit", shown="1 MiB", minimum=0, worker=True)
    network: bool = setting(True, "workers may reach the network")
    env_file: str | None = setting(
        None, "read the project's variables from this file instead of the project's `.env` "
        "(a Kubernetes Secret mounted as a folder)", metavar="PATH",
        shown="`.env` in the project")
    uid_base: int | None = setting(
        None, "the first worker's uid; unset: the first range no other fnd on the host holds "
        "(docs/sandbox.md#worker-uids)", shown="auto, from 61000")
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    functions: Mapping[str, FunctionSettings] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @property
    def instance(self) -> str:
        """The name on every invocation line: ``instance_name``, else the project folder's."""
        return self.instance_name or self.project_dir.name

    def timeout_for(self, function: str) -> float:
        override = self.functions.get(function)
        if override is not None and override.timeout is not None:
            return override.timeout
        return self.timeout

    @property
    def allows_broken(self) -> bool:
        """Serve the functions that work when others cannot run (always in dev mode, where
        the broken one's 500 shows the error)."""
        return self.allow_broken or self.dev

    def isolated(self, function: str) -> bool:
        """Whether `function` gets a fresh worker per invocation."""
        override = self.functions.get(function)
        if override is not None and override.isolation is not None:
            return override.isolation == "invocation"
        return self.isolation == "invocation"

    def worker_settings(self) -> WorkerSettings:
        """The settings every worker receives, under their own names (declared worker=True)."""
        return cast(WorkerSettings, {name: getattr(self, name) for name in _FOR_WORKER})

    def context_defaults(self) -> dict[str, str | None]:
        """The context fields every invocation starts from (docs/handlers.md#context).

        Every project variable is spread over the defaults, as Twilio does: `.env` may set any
        default key (`ACCOUNT_SID`... and also `PATH` and `DOMAIN_NAME`, which the front-end
        fills per request only when the project does not set them).
        """
        env = self.env
        base: dict[str, str | None] = {
            "ACCOUNT_SID": env.get("ACCOUNT_SID"),
            "AUTH_TOKEN": env.get("AUTH_TOKEN"),
            "SERVICE_SID": env.get("SERVICE_SID"),
            "ENVIRONMENT_SID": env.get("ENVIRONMENT_SID"),
        }
        base.update(env)
        return base


def _declared(declared: dataclasses.Field[Any], hint: Any) -> Setting:
    help_text, rest = declared.metadata["setting"]
    args = typing.get_args(hint)
    optional = type(None) in args
    kind = typing.get_origin(hint) or hint
    if optional:
        kind = next(arg for arg in args if arg is not type(None))
    return Setting(declared.name, kind, optional, declared.default, help_text, **rest)


_HINTS = typing.get_type_hints(Config)
SETTINGS: tuple[Setting, ...] = tuple(
    _declared(f, _HINTS[f.name]) for f in dataclasses.fields(Config) if "setting" in f.metadata)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
_FOR_WORKER = tuple(s.name for s in SETTINGS if s.worker)
_DESCRIBED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = BY_NAME[name].kind
    if kind is tuple:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: {name} must be a list of addresses")
        return tuple(value)
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        try:
            if kind is bool:
                if text not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                    raise ValueError(text)
                return text in {"1", "true", "yes", "on"}
            return kind(text)
        except ValueError:
            message = f"{source}: {name} must be {_DESCRIBED[kind]}, got {value!r}"
            raise ConfigError(message) from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {name} must be {_DESCRIBED[kind]}, got {value!r}")
    return value


_SETTABLE = frozenset(BY_NAME)


_TABLES = {"env", "functions"}
_PER_FUNCTION = {"timeout", "isolation"}
# FND_* variables that are not settings (scripts/test names its venv so).
_NOT_SETTINGS = {"FND_VENV"}


def _did_you_mean(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``FND_*`` variable that sets nothing (a misspelt setting is
    otherwise silently ignored)."""
    known = {"FND_" + name.upper() for name in _SETTABLE} | _NOT_SETTINGS
    warnings = []
    for variable in sorted(environ):
        if variable.startswith("FND_") and variable not in known:
            hint = _did_you_mean(variable, known - _NOT_SETTINGS)
            warnings.append(f"environment variable {variable} is not an fnd setting; "
                            f"ignored{hint}")
    return warnings


def unknown_routes(config: Config, functions: Iterable[str]) -> list[str]:
    """A warning for each ``[functions."/path"]`` table naming no function of the project."""
    present = set(functions)
    return [f'[functions."{route}"] in fnd.toml names no function; its settings are unused'
            f"{_did_you_mean(route, present)}"
            for route in sorted(config.functions) if route not in present]


def _from_toml(path: Path) -> tuple[dict[str, Any], dict[str, str], dict[str, FunctionSettings]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    env_table = data.pop("env", {})
    functions_table = data.pop("functions", {})
    settings: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _SETTABLE:
            raise ConfigError(f"{path}: unknown setting {key!r}"
                              f"{_did_you_mean(key, _SETTABLE | _TABLES)}")
        settings[key] = _coerce(key, value, str(path))
    if not isinstance(env_table, dict):
        raise ConfigError(f"{path}: [env] must be a table")
    env = {str(k): str(v) for k, v in env_table.items()}
    functions: dict[str, FunctionSettings] = {}
    for name, table in functions_table.items():
        if isinstance(table, dict) and "memory_mb" in table:
            # Any worker serves any function and RLIMIT_DATA is fixed at fork: a per-function
            # limit would need a pool per limit. Refuse it rather than silently ignore it.
            raise ConfigError(f"{path}: [functions.{name!r}] memory_mb is not supported; "
                              "set memory_mb for the whole project")
        if not isinstance(table, dict) or set(table) - _PER_FUNCTION:
            unknown = sorted(set(table) - _PER_FUNCTION) if isinstance(table, dict) else []
            hint = _did_you_mean(unknown[0], _PER_FUNCTION) if unknown else ""
            raise ConfigError(f"{path}: [functions.{name!r}] takes timeout and isolation only"
                              + (f"; unknown {unknown[0]!r}{hint}" if unknown else ""))
        route = name if name.startswith("/") else "/" + name
        isolation = _coerce("isolation", table["isolation"], str(path)) \
            if "isolation" in table else None
        problem = BY_NAME["isolation"].problem(isolation)
        if problem:
            raise ConfigError(f"{path}: [functions.{name!r}] {problem}")
        functions[route] = FunctionSettings(
            timeout=_coerce("timeout", table["timeout"], str(path)) if "timeout" in table else None,
            isolation=isolation,
        )
    return settings, env, functions


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for name in _SETTABLE:
        raw = environ.get("FND_" + name.upper())
        if raw is not None and raw != "":
            settings[name] = _coerce(name, raw, "FND_" + name.upper())
    return settings


def load_config(
    project_dir: str | Path,
    flags: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge defaults < fnd.toml < FND_* environment < flags; validate; return a frozen Config."""
    root = Path(project_dir).resolve()
    if not (root / "functions").is_dir() and not (root / "assets").is_dir():
        raise ConfigError(f"{root} is not a project: it has neither functions/ nor assets/")
    toml_path = Path(config_file) if config_file else root / "fnd.toml"
    settings: dict[str, Any] = {}
    env: dict[str, str] = {}
    functions: dict[str, FunctionSettings] = {}
    if toml_path.exists():
        settings, env, functions = _from_toml(toml_path)
    elif config_file:
        raise ConfigError(f"--config {config_file}: no such file")
    settings.update(_from_environment(os.environ if environ is None else environ))
    for key, value in (flags or {}).items():
        if value is not None:
            if key not in _SETTABLE:
                raise ConfigError(f"unknown setting {key!r}{_did_you_mean(key, _SETTABLE)}")
            settings[key] = _coerce(key, value, BY_NAME[key].flag_name)
    env_file = settings.get("env_file")
    dotenv_path = root / ".env" if env_file is None else root / env_file
    if env_file is not None and not dotenv_path.is_file():
        raise ConfigError(f"env_file {env_file}: no such file")
    if dotenv_path.exists():
        env.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    config = Config(
        project_dir=root,
        env=MappingProxyType(env),
        functions=MappingProxyType(functions),
        **settings,
    )
    _validate(config)
    return config


def _validate(config: Config) -> None:
    for declared in SETTINGS:
        problem = declared.problem(getattr(config, declared.name))
        if problem:
            raise ConfigError(problem)
    if config.workers_max < config.workers_min:
        raise ConfigError(
            f"workers_max ({config.workers_max}) is below workers_min ({config.workers_min})"
        )
    if config.no_signatures and not config.dev:
        raise ConfigError("--no-signatures is only allowed together with --dev")
    if config.public_url is not None and (
            not config.public_url.startswith(("http://", "https://"))
            or not url_host(config.public_url)):
        raise ConfigError(f"public_url must be an http:// or https:// URL with a valid host, "
                          f"got {config.public_url!r}")
    if not all(" " <= char <= "~" for char in config.server_header):
        raise ConfigError(f"server_header must be printable ASCII, got {config.server_header!r}")
    problem = frame_problem(config)
    if problem:
        raise ConfigError(problem)
    if config.max_buffered_mb * _MIB < config.max_response_body:
        raise ConfigError(
            f"max_buffered_mb = {config.max_buffered_mb} cannot hold one answer of "
            f"max_response_body ({config.max_response_body} bytes): raise it to at least "
            f"{-(-config.max_response_body // _MIB)}")
