"""Each setting is declared once, as a field of `Config`: the loader, `fnd serve`, the README,
the environment and what workers receive are derived from it, under the same name."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from pathlib import Path

import pytest

from fnd.cli import _parser
from fnd.daemon.config import BY_NAME, SETTINGS, Config, load_config, unknown_environment
from fnd.daemon.config_cli import (
    README_END,
    README_START,
    flag_values,
    markdown_table,
    readme_block,
    rewrite_readme,
)
from fnd.daemon.http.event import check_request_headers
from fnd.daemon.project import scan_project
from fnd.daemon.server import worker_config
from fnd.protocol.messages import WorkerConfig, WorkerSettings
from fnd.protocol.sandbox_config import resolve
from fnd.worker.received_config import ReceivedConfig

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
NOT_SETTINGS = {"project_dir", "env", "functions"}  # the project itself, not settings
# What a worker receives besides settings: the project as the daemon scanned it, the sandbox.
WORKER_PROJECT = {"project_dir", "deps_dir", "functions", "sources", "assets", "sandbox"}
# The code that could declare a setting a second time (fnd/daemon etc. are symlinks to these).
SOURCES = [ROOT / "daemon", ROOT / "worker", ROOT / "protocol", ROOT / "fnd" / "ctl",
           ROOT / "fnd" / "author", *sorted((ROOT / "fnd").glob("*.py"))]

# Parameters that share a setting's name and default by chance, not by copying it.
NOT_COPIES = {"daemon/sandbox/cgroups.py: timeout"}  # how long cleanup waits for a cgroup
# The `fnd serve` flags of the release before the table: none may disappear or change meaning.
FLAGS_BEFORE = {
    "--port", "--unix", "--host", "--config", "--workers-min", "--workers-max", "--timeout",
    "--allow-broken", "--isolation", "--dev", "--no-signatures", "--strict", "--log-format",
    "--control", "--metrics-port", "--header-timeout", "--keepalive-timeout",
    "--max-request-body", "--max-response-body",
}
# The fnd.toml keys (and so FND_* names) users have: none may disappear or be renamed.
NAMES_BEFORE = {
    "host", "port", "unix", "control", "metrics_port", "workers_min", "workers_max",
    "queue_max", "queue_timeout", "timeout", "idle_timeout", "drain_timeout", "header_timeout",
    "keepalive_timeout", "body_timeout", "send_timeout", "max_connections", "max_buffered_mb",
    "max_requests", "max_requests_jitter", "max_worker_age", "isolation", "allow_broken",
    "max_rss_mb", "dev", "strict", "no_signatures", "log_format", "max_request_body",
    "max_response_body", "max_header_bytes", "max_header_count", "cors", "cookie_secure",
    "public_url", "twilio_api_base_url", "trusted_proxies", "sandbox", "memory_mb", "scratch_mb",
    "max_output", "network", "uid_base",
    "server_header", "instance_name", "otlp_endpoint",  # #24
    "metrics_host", "env_file", "accounting",  # #23
}


def test_every_config_field_is_a_declared_setting() -> None:
    fields = {f.name: f for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    assert set(fields) - NOT_SETTINGS == set(BY_NAME) and len(BY_NAME) == len(SETTINGS)
    assert {name for name, f in fields.items() if "setting" in f.metadata} == set(BY_NAME)
    for setting in SETTINGS:
        assert fields[setting.name].default == setting.default, setting.name
        kind: object = tuple[str, ...] if setting.kind is tuple else setting.kind
        assert hints[setting.name] == (kind | None if setting.optional else kind), setting.name  # type: ignore[operator]
        assert setting.help and (setting.default is None) <= setting.optional, setting.name
        assert setting.problem(setting.default) is None, setting.name


def test_names_and_variables_are_those_of_before() -> None:
    assert set(BY_NAME) == NAMES_BEFORE
    variables = {setting.variable for setting in SETTINGS}
    assert variables == {"FND_" + name.upper() for name in NAMES_BEFORE}
    assert unknown_environment(dict.fromkeys(variables, "1")) == []
    assert unknown_environment({"FND_MAX_BODY": "1"})  # a name that is not declared is unknown


def test_readme_table_is_the_declared_one() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count(README_START) == 1 and text.count(README_END) == 1
    start, end = readme_block(text)
    assert text[start:end] == markdown_table(), (
        "README settings table drifted: run `python -m fnd.daemon.config_cli --readme`")
    for setting in SETTINGS:
        assert f"| `{setting.name}` | `{setting.variable}` |" in markdown_table()


def test_rewrite_readme_replaces_only_the_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_START}\n| stale |\n{README_END}\n\nafter\n")
    assert rewrite_readme(readme)
    assert readme.read_text() == f"# x\n\n{README_START}\n{markdown_table()}{README_END}\n\nafter\n"
    assert not rewrite_readme(readme)


def _serve_options() -> dict[str, object]:
    commands = next(a for a in _parser()._actions if a.dest == "command")
    serve = commands.choices["serve"]  # type: ignore[index]
    return {option: action for action in serve._actions for option in action.option_strings
            if option not in {"-h", "--help"}}


def test_serve_flags_are_the_declared_ones_and_keep_those_of_before() -> None:
    declared = {s.flag_name: s for s in SETTINGS if s.flag}
    options = _serve_options()
    assert set(options) == set(declared) | {"--config"}
    assert set(options) >= FLAGS_BEFORE
    for flag, setting in declared.items():
        action = options[flag]
        assert action.dest == setting.name, flag  # type: ignore[attr-defined]
        assert tuple(action.choices or ()) == setting.choices, flag  # type: ignore[attr-defined]


def test_every_flag_reaches_the_config_with_its_type(tmp_path: Path) -> None:
    (tmp_path / "functions").mkdir()
    argv = ["serve", str(tmp_path), "--port", "0", "--host", "::1", "--workers-min", "3",
            "--workers-max", "5", "--timeout", "2", "--allow-broken", "--isolation",
            "invocation", "--dev", "--no-signatures", "--strict", "--log-format", "json",
            "--control", "/tmp/c.sock", "--metrics-port", "9464", "--header-timeout", "3",
            "--keepalive-timeout", "4", "--max-request-body", "1000",
            "--max-response-body", "2000"]
    flags = flag_values(_parser().parse_args(argv))
    config = load_config(tmp_path, flags, environ={})
    assert (config.port, config.host, config.workers_min, config.workers_max) == (0, "::1", 3, 5)
    assert config.timeout == 2.0 and isinstance(config.timeout, float)
    assert config.allow_broken and config.dev and config.no_signatures and config.strict
    assert (config.isolation, config.log_format, config.control) == (
        "invocation", "json", "/tmp/c.sock")
    assert (config.metrics_port, config.header_timeout, config.keepalive_timeout) == (9464, 3, 4)
    assert (config.max_request_body, config.max_response_body) == (1000, 2000)
    unset = flag_values(_parser().parse_args(["serve"]))
    assert all(value is None for value in unset.values())  # an unset flag overrides nothing


@pytest.mark.parametrize("argv", [["serve", "--port", "1", "--unix", "/tmp/s"],
                                  ["serve", "--isolation", "fork"],
                                  ["serve", "--log-format", "xml"]])
def test_flags_refused_as_before(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(argv)


def test_every_setting_is_read_from_its_variable(tmp_path: Path) -> None:
    (tmp_path / "functions").mkdir()
    (tmp_path / "secret.env").write_text("A=1\n")
    samples = {int: "7", float: "7.5", bool: "true", tuple: "unix,10.0.0.1"}
    strings = {"host": "::1", "isolation": "invocation", "sandbox": "permissive",
               "log_format": "console", "public_url": "https://example.com",
               "env_file": "secret.env", "accounting": "uid"}
    for setting in SETTINGS:
        raw = strings.get(setting.name, samples.get(setting.kind, "/tmp/x"))
        if setting.kind is bool:
            raw = "false" if setting.default else "true"
        if setting.name == "no_signatures":
            environ = {setting.variable: raw, "FND_DEV": "1"}
        elif setting.name == "workers_min":
            environ = {setting.variable: "1"}
        else:
            environ = {setting.variable: raw}
        config = load_config(tmp_path, environ=environ)
        value = getattr(config, setting.name)
        assert value != setting.default, setting.name
        assert isinstance(value, setting.kind), setting.name


def test_choices_and_bounds_come_from_the_declaration(tmp_path: Path) -> None:
    (tmp_path / "functions").mkdir()
    for setting in SETTINGS:
        bad = ("nope" if setting.choices else -1 if setting.minimum is not None
               else 0 if setting.positive else None)
        if bad is None:
            continue
        message = setting.problem(bad)
        assert message and message.startswith(setting.name), setting.name
        with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(tmp_path, {setting.name: bad}, environ={})


def test_workers_receive_the_declared_settings_under_their_names(tmp_path: Path) -> None:
    sent = {s.name for s in SETTINGS if s.worker}
    hints = typing.get_type_hints(Config)
    assert set(WorkerSettings.__annotations__) == sent
    assert set(WorkerConfig.__annotations__) - WORKER_PROJECT == sent
    assert typing.get_type_hints(WorkerSettings) == {name: hints[name] for name in sent}
    received = typing.get_type_hints(ReceivedConfig)
    assert {f.name for f in dataclasses.fields(ReceivedConfig)} - WORKER_PROJECT == sent
    assert {name: received[name] for name in sent} == {name: hints[name] for name in sent}
    # No default on the worker's side: the daemon always sends the value it declared.
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(ReceivedConfig)
               if f.name in sent)
    (tmp_path / "functions").mkdir()
    config = load_config(tmp_path, {"max_response_body": 1234, "cookie_secure": False},
                         environ={})
    frame = worker_config(config, scan_project(tmp_path), resolve({}))
    assert {key: value for key, value in frame.items() if key not in WORKER_PROJECT} == {
        name: getattr(config, name) for name in sent}
    assert ReceivedConfig.from_config(frame).max_response_body == 1234


def test_header_limits_have_no_default_outside_the_config() -> None:
    parameters = inspect.signature(check_request_headers).parameters
    assert all(p.default is inspect.Parameter.empty for p in parameters.values())


def _given_defaults(tree: ast.AST) -> list[tuple[str, ast.expr]]:
    """(name, value) for each annotated assignment, keyword default and module constant."""
    found: list[tuple[str, ast.expr]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign | ast.Assign) and node.value is not None:
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            found += [(t.id, node.value) for t in targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.arguments):
            positional = node.posonlyargs + node.args
            pairs = zip(positional[len(positional) - len(node.defaults):], node.defaults,
                        strict=True)
            found += [(arg.arg, value) for arg, value in pairs]
            found += [(arg.arg, value) for arg, value in zip(node.kwonlyargs, node.kw_defaults,
                                                             strict=True) if value is not None]
    return found


def _constant(value: ast.expr) -> object:
    try:
        return eval(compile(ast.Expression(value), "<default>", "eval"), {"__builtins__": {}})
    except Exception:
        return None  # not a constant expression


def test_no_module_but_the_config_gives_a_setting_its_default_again() -> None:
    """`max_header_bytes: int = 15 * 1024` or `MAX_HEADER_BYTES = 15 * 1024` outside
    daemon/config.py is a second declaration (the worker once had its own copies)."""
    distinctive = {s.name: s.default for s in SETTINGS
                   if s.default is not None and not isinstance(s.default, bool)}
    files = [path for source in SOURCES
             for path in ([source] if source.is_file() else sorted(source.rglob("*.py")))]
    assert ROOT / "daemon" / "config.py" in files
    copies = []
    for path in files:
        if path == ROOT / "daemon" / "config.py":
            continue
        for name, value in _given_defaults(ast.parse(path.read_text(encoding="utf-8"))):
            declared = distinctive.get(name.lower())
            if declared is not None and _constant(value) == declared:
                copies.append(f"{path.relative_to(ROOT)}: {name}")
    assert set(copies) - NOT_COPIES == set()
