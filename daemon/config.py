"""One typed, frozen configuration: flags > FND_* environment > fnd.toml > defaults.

The project's variables (`.env` and `[env]`) are secrets: they live in `Config.env`, are sent to
workers per invocation, and never reach the zygote or a log line.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dotenv import dotenv_values

from fnd.daemon.http.hostname import url_host
from fnd.daemon.settings_table import BY_NAME, names
from fnd.protocol.frames import MAX_FRAME


class ConfigError(Exception):
    """A setting is missing, malformed or contradictory; the message names it."""


_MIB = 1024 * 1024


@dataclass(frozen=True)
class FunctionSettings:
    """Per-function overrides from `[functions."/path"]` in fnd.toml."""

    timeout: float | None = None
    isolation: str | None = None


# Each field is declared in daemon/settings_table.py; tests/daemon/test_settings_table.py
# keeps the names, types and defaults here in step with it.
@dataclass(frozen=True)
class Config:
    project_dir: Path
    host: str = "127.0.0.1"
    port: int = 3000
    unix: str | None = None
    control: str | None = None
    metrics_port: int | None = None
    workers_min: int = 2
    workers_max: int = 4
    queue_max: int = 1024
    queue_timeout: float = 10.0
    timeout: float = 5.0
    idle_timeout: float = 60.0
    drain_timeout: float = 30.0
    header_timeout: float = 10.0  # a request head must be complete this long after it starts
    keepalive_timeout: float = 15.0  # an idle connection is closed after this long
    body_timeout: float = 60.0  # a request body must be complete this long after its head
    send_timeout: float = 60.0  # a client that takes nothing of an answer this long is cut off
    max_connections: int = 1000  # client connections; one more: 503 and closed
    max_buffered_mb: int = 64  # large answers held for clients, all connections together
    # Recycling bounds what one worker's code can leave behind (docs/security.md).
    max_requests: int = 10000  # 0: never recycle by count
    max_requests_jitter: int = 1000
    max_worker_age: float = 3600.0  # seconds; 0: never recycle by age
    isolation: str = "worker"  # "invocation": a fresh worker for every call
    allow_broken: bool = False  # start / reload even when some functions cannot run
    max_rss_mb: int = 0  # 0: never recycle by RSS
    dev: bool = False
    strict: bool = False
    no_signatures: bool = False
    log_format: str | None = None  # "json" | "console" | None (decide by terminal)
    max_request_body: int = 1 * _MIB
    max_response_body: int = 4 * _MIB
    max_header_bytes: int = 15 * 1024
    max_header_count: int = 90
    cors: bool = True
    cookie_secure: bool = True
    public_url: str | None = None
    twilio_api_base_url: str | None = None
    trusted_proxies: tuple[str, ...] = ("unix",)
    sandbox: str = "strict"  # "strict" | "permissive"
    memory_mb: int = 256
    scratch_mb: int = 64  # each worker's scratch tmpfs; 0: not limited
    max_output: int = 1 * _MIB  # function output logged per invocation; 0: not limited
    network: bool = True
    uid_base: int | None = None  # None: a free range is claimed at start
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    functions: Mapping[str, FunctionSettings] = field(
        default_factory=lambda: MappingProxyType({})
    )

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


# Settings that may appear in fnd.toml / FND_* / flags, with the type each is parsed as
# (declared in daemon/settings_table.py).
_INT = names(int, optional=False)
_FLOAT = names(float, optional=False)
_BOOL = names(bool, optional=False)
_STR = names(str, optional=False)
_OPTIONAL_STR = names(str, optional=True)
_OPTIONAL_INT = names(int, optional=True)


_ISOLATIONS = ("worker", "invocation")
_DESCRIBED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _kind(name: str) -> type:
    if name in _INT or name in _OPTIONAL_INT:
        return int
    if name in _FLOAT:
        return float
    if name in _BOOL:
        return bool
    return str


def _coerce(name: str, value: Any, source: str) -> Any:
    if name == "trusted_proxies":
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: trusted_proxies must be a list of addresses")
        return tuple(value)
    kind = _kind(name)
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
        if isolation not in (None, *_ISOLATIONS):
            raise ConfigError(f"{path}: [functions.{name!r}] isolation must be "
                              f"'worker' or 'invocation', got {isolation!r}")
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
            settings[key] = _coerce(key, value, "--" + key.replace("_", "-"))
    dotenv_path = root / ".env"
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
    if config.workers_min < 1:
        raise ConfigError("workers_min must be at least 1")
    if config.workers_max < config.workers_min:
        raise ConfigError(
            f"workers_max ({config.workers_max}) is below workers_min ({config.workers_min})"
        )
    for name in ("timeout", "queue_timeout", "drain_timeout", "idle_timeout", "header_timeout",
                 "keepalive_timeout", "body_timeout", "send_timeout", "max_connections",
                 "max_buffered_mb"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be positive")
    for name in ("max_requests", "max_requests_jitter", "max_worker_age"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must be 0 (off) or positive")
    if config.isolation not in _ISOLATIONS:
        raise ConfigError(f"isolation must be 'worker' or 'invocation', got {config.isolation!r}")
    for name in ("memory_mb", "scratch_mb", "max_output"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must not be negative")
    if config.sandbox not in {"strict", "permissive"}:
        raise ConfigError(f"sandbox must be 'strict' or 'permissive', got {config.sandbox!r}")
    if config.log_format not in {None, "json", "console"}:
        raise ConfigError(f"log_format must be 'json' or 'console', got {config.log_format!r}")
    if config.no_signatures and not config.dev:
        raise ConfigError("--no-signatures is only allowed together with --dev")
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"port {config.port} is out of range")
    if config.public_url is not None and (
            not config.public_url.startswith(("http://", "https://"))
            or not url_host(config.public_url)):
        raise ConfigError(f"public_url must be an http:// or https:// URL with a valid host, "
                          f"got {config.public_url!r}")
    for name in ("max_request_body", "max_response_body", "max_header_bytes", "max_header_count"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must not be negative")
    _check_frame_fits(config)
    if config.max_buffered_mb * _MIB < config.max_response_body:
        raise ConfigError(
            f"max_buffered_mb = {config.max_buffered_mb} cannot hold one answer of "
            f"max_response_body ({config.max_response_body} bytes): raise it to at least "
            f"{-(-config.max_response_body // _MIB)}")


# What a worker frame holds besides the body, at most (see _check_frame_fits).
_QUERY_ROOM = 96 * 1024  # a 64 KiB request line whose query is "a&b&c...": 1.5x in msgpack
_FIXED_ROOM = 16 * 1024  # ids, function name and file, method, path, timeout, status, error
_PER_FIELD = 16  # msgpack framing of one header or cookie pair, at most


def largest_request_body(config: Config) -> int:
    """The biggest request body whose INVOKE frame surely fits in MAX_FRAME.

    The body reaches the worker once, parsed into the event (never raw as well), but parsed
    JSON can grow: ``0.0,`` (4 bytes) becomes a 9-byte msgpack float, so 9/4 is the worst
    case (a form grows by 4/3 at most). Next to it travel the headers (a ``Cookie`` header twice:
    raw and parsed), the query, the project's ``.env`` in the context, and a few fixed fields.
    """
    env = sum(len(k.encode()) + len(v.encode()) + _PER_FIELD for k, v in config.env.items())
    headers = 3 * config.max_header_bytes + 2 * _PER_FIELD * config.max_header_count
    room = MAX_FRAME - headers - env - _QUERY_ROOM - _FIXED_ROOM
    return max(0, room * 4 // 9)


def largest_response_body(config: Config) -> int:
    """The biggest response body whose RESULT frame surely fits in MAX_FRAME (body is bytes)."""
    headers = config.max_header_bytes + _PER_FIELD * config.max_header_count
    return max(0, MAX_FRAME - headers - 4 * _FIXED_ROOM)


def _check_frame_fits(config: Config) -> None:
    """Refuse limits a worker frame could not carry: such a request would fail every time."""
    for name, largest in (("max_request_body", largest_request_body(config)),
                          ("max_response_body", largest_response_body(config))):
        value = getattr(config, name)
        if value > largest:
            raise ConfigError(
                f"{name} = {value} is too large: with this max_header_bytes, max_header_count "
                f"and .env, the most one {MAX_FRAME} byte worker frame surely carries is "
                f"{largest}"
            )
