"""One typed config: flags > FND_* environment > fnd.toml > defaults
(README.md#configuration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fnd.daemon.config import (
    Config,
    ConfigError,
    load_config,
    unknown_environment,
    unknown_routes,
)

pytestmark = pytest.mark.unit


def _project(tmp_path: Path, toml: str = "", dotenv: str = "") -> Path:
    (tmp_path / "functions").mkdir(parents=True)
    if toml:
        (tmp_path / "fnd.toml").write_text(toml)
    if dotenv:
        (tmp_path / ".env").write_text(dotenv)
    return tmp_path


def test_defaults(tmp_path: Path) -> None:
    config = load_config(_project(tmp_path), environ={})
    assert config.timeout == 5.0 and config.workers_min == 2 and config.workers_max == 4
    assert config.max_request_body == 1024 * 1024 and config.max_response_body == 4 * 1024 * 1024
    assert config.sandbox == "strict" and config.memory_mb == 256 and config.cors is True
    assert config.trusted_proxies == ("unix",)


def test_precedence_flags_over_environment_over_toml(tmp_path: Path) -> None:
    project = _project(tmp_path, "timeout = 7\nworkers_min = 3\nworkers_max = 6\nport = 4000\n")
    environ = {"FND_TIMEOUT": "8", "FND_WORKERS_MIN": "4"}
    config = load_config(project, {"timeout": 9.5, "port": None}, environ=environ)
    assert config.timeout == 9.5  # flag
    assert config.workers_min == 4  # environment
    assert config.workers_max == 6 and config.port == 4000  # fnd.toml; an unset flag is None
    assert isinstance(config.timeout, float)


def test_environment_values_are_parsed_by_type(tmp_path: Path) -> None:
    environ = {"FND_CORS": "off", "FND_DEV": "yes", "FND_QUEUE_TIMEOUT": "0.5",
               "FND_TRUSTED_PROXIES": "unix, 10.0.0.0/8"}
    config = load_config(_project(tmp_path), environ=environ)
    assert config.cors is False and config.dev is True and config.queue_timeout == 0.5
    assert config.trusted_proxies == ("unix", "10.0.0.0/8")


def test_env_table_and_dotenv_make_the_context(tmp_path: Path) -> None:
    project = _project(tmp_path, '[env]\nGREETING = "toml"\nOTHER = "x"\n',
                       "GREETING=dotenv\nACCOUNT_SID=AC123\n")
    config = load_config(project, environ={})
    assert dict(config.env) == {"GREETING": "dotenv", "OTHER": "x", "ACCOUNT_SID": "AC123"}
    context = config.context_defaults()
    assert context["ACCOUNT_SID"] == "AC123" and context["AUTH_TOKEN"] is None
    assert context["GREETING"] == "dotenv"


def test_env_file_replaces_the_projects_dotenv(tmp_path: Path) -> None:
    project = _project(tmp_path / "p", '[env]\nOTHER = "x"\n', "GREETING=project\n")
    secret = tmp_path / "secret"  # a Secret volume: the file is a symlink into "..data"
    (secret / "..data").mkdir(parents=True)
    (secret / "..data" / ".env").write_text("GREETING=secret\nAUTH_TOKEN=t\n")
    (secret / ".env").symlink_to("..data/.env")
    config = load_config(project, environ={"FND_ENV_FILE": str(secret / ".env")})
    assert dict(config.env) == {"OTHER": "x", "GREETING": "secret", "AUTH_TOKEN": "t"}
    (project / "other.env").write_text("GREETING=relative\n")
    config = load_config(project, environ={"FND_ENV_FILE": "other.env"})  # from the project
    assert config.env["GREETING"] == "relative"


def test_missing_env_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="env_file /nowhere/.env: no such file"):
        load_config(_project(tmp_path), environ={"FND_ENV_FILE": "/nowhere/.env"})


def test_per_function_timeout(tmp_path: Path) -> None:
    project = _project(tmp_path, '[functions."/slow"]\ntimeout = 20\n[functions.fast]\n'
                                 "timeout = 1\n")
    config = load_config(project, environ={})
    assert config.timeout_for("/slow") == 20.0
    assert config.timeout_for("/fast") == 1.0  # a name without "/" means the same route
    assert config.timeout_for("/other") == 5.0


def test_per_function_memory_is_refused_not_ignored(tmp_path: Path) -> None:
    project = _project(tmp_path, '[functions."/big"]\nmemory_mb = 512\n')
    with pytest.raises(ConfigError, match="memory_mb is not supported"):
        load_config(project, environ={})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("tiemout = 3\n", "unknown setting 'tiemout' (did you mean 'timeout'?)"),
        ("worker_max = 3\n", "unknown setting 'worker_max' (did you mean 'workers_max'?)"),
        ("[function.'/a']\ntimeout = 3\n",
         "unknown setting 'function' (did you mean 'functions'?)"),
        ('[functions."/a"]\ntimout = 3\n', "unknown 'timout' (did you mean 'timeout'?)"),
        ('timeout = "soon"\n', "timeout must be a number"),
        ("workers_min = true\n", "workers_min must be an integer"),
        ("workers_min = 5\nworkers_max = 2\n", "workers_max (2) is below workers_min (5)"),
        ("timeout = 0\n", "timeout must be positive"),
        ('sandbox = "off"\n', "sandbox must be 'strict' or 'permissive'"),
        ("port = 70000\n", "port 70000 is out of range"),
        ("timeout = [\n", "fnd.toml"),
    ],
)
def test_bad_settings_name_the_setting(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(_project(tmp_path, toml), environ={})
    assert message in str(error.value)


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FND_WORKERS_MAX: workers_max must be an integer"):
        load_config(_project(tmp_path), environ={"FND_WORKERS_MAX": "many"})


def test_no_signatures_needs_dev(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only allowed together with --dev"):
        load_config(_project(tmp_path), {"no_signatures": True}, environ={})
    assert load_config(tmp_path, {"no_signatures": True, "dev": True}, environ={}).no_signatures


def test_not_a_project_and_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither functions/ nor assets/"):
        load_config(tmp_path, environ={})
    with pytest.raises(ConfigError, match="no such file"):
        load_config(_project(tmp_path), config_file=tmp_path / "missing.toml", environ={})


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(_project(tmp_path), environ={})
    with pytest.raises(AttributeError):
        config.timeout = 1.0  # type: ignore[misc]
    assert isinstance(config, Config)


def test_scratch_and_output_bounds(tmp_path: Path) -> None:
    defaults = load_config(_project(tmp_path), environ={})
    assert (defaults.scratch_mb, defaults.max_output) == (64, 1024 * 1024)
    config = load_config(tmp_path, environ={"FND_SCRATCH_MB": "8", "FND_MAX_OUTPUT": "4096"})
    assert (config.scratch_mb, config.max_output) == (8, 4096)
    for name in ("scratch_mb", "max_output"):
        with pytest.raises(ConfigError, match=f"{name} must not be negative"):
            load_config(tmp_path, environ={f"FND_{name.upper()}": "-1"})


def test_connection_timeouts(tmp_path: Path) -> None:
    config = load_config(_project(tmp_path), environ={})
    assert config.header_timeout == 10.0 and config.keepalive_timeout == 15.0
    project = _project(tmp_path / "p", "header_timeout = 3\n")
    config = load_config(project, {"keepalive_timeout": 4}, environ={"FND_HEADER_TIMEOUT": "2.5"})
    assert config.header_timeout == 2.5 and config.keepalive_timeout == 4.0
    with pytest.raises(ConfigError, match="keepalive_timeout must be positive"):
        load_config(project, {"keepalive_timeout": 0}, environ={})


def test_body_limits_must_fit_in_a_worker_frame(tmp_path: Path) -> None:
    project = _project(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(project, {"max_request_body": 100_000_000}, environ={})
    message = str(info.value)
    assert message.startswith("max_request_body = 100000000 is too large") and "\n" not in message
    with pytest.raises(ConfigError, match="^max_response_body = 8388608 is too large"):
        load_config(project, environ={"FND_MAX_RESPONSE_BODY": str(8 * 1024 * 1024)})
    # what fits: a 3 MiB request body (JSON may grow 9/4 on the way), a 7 MiB response
    config = load_config(project, {"max_request_body": 3 * 1024 * 1024,
                                   "max_response_body": 7 * 1024 * 1024}, environ={})
    assert config.max_request_body == 3 * 1024 * 1024


def test_body_limit_accounts_for_headers_and_dotenv(tmp_path: Path) -> None:
    flags = {"max_request_body": 3_400_000}
    assert load_config(_project(tmp_path / "fits"), flags, environ={}).max_request_body == 3_400_000
    with pytest.raises(ConfigError, match="^max_request_body"):
        load_config(_project(tmp_path, dotenv="BIG=" + "x" * 1024 * 1024 + "\n"), flags,
                    environ={})
    with pytest.raises(ConfigError, match="^max_request_body"):
        load_config(_project(tmp_path / "p"), {**flags, "max_header_bytes": 512 * 1024},
                    environ={})


def test_public_url_must_be_an_http_url_with_a_host(tmp_path: Path) -> None:
    project = _project(tmp_path)
    for bad in ("functions.example.com", "https://", "https://bad host/", "ftp://x.example"):
        with pytest.raises(ConfigError, match="^public_url must be"):
            load_config(project, environ={"FND_PUBLIC_URL": bad})
    config = load_config(project, environ={"FND_PUBLIC_URL": "https://fn.example.com:8443/b"})
    assert config.public_url == "https://fn.example.com:8443/b"


def test_unknown_flag_setting_suggests_the_close_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'worker_min' \(did you mean 'workers_min'\?\)"):
        load_config(_project(tmp_path), {"worker_min": 1}, environ={})


def test_unknown_fnd_variables_are_warned_about_with_a_suggestion() -> None:
    environ = {"FND_WORKER_MAX": "3", "FND_TIMEOUT": "2", "FND_VENV": "/opt/v", "HOME": "/"}
    assert unknown_environment(environ) == [
        "environment variable FND_WORKER_MAX is not an fnd setting; ignored "
        "(did you mean 'FND_WORKERS_MAX'?)"
    ]


def test_functions_tables_for_missing_routes_are_warned_about(tmp_path: Path) -> None:
    project = _project(tmp_path, '[functions."/sms/replly"]\ntimeout = 3\n'
                                 '[functions."/sms/reply"]\ntimeout = 3\n')
    config = load_config(project, environ={})
    assert unknown_routes(config, ["/sms/reply", "/other"]) == [
        '[functions."/sms/replly"] in fnd.toml names no function; its settings are unused '
        "(did you mean '/sms/reply'?)"
    ]
