"""Each setting is declared once: Config, the loader, `fnd serve` and the README agree with it."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from fnd.cli import _parser
from fnd.daemon.config import Config, load_config
from fnd.daemon.settings_table import (
    README_END,
    README_START,
    SETTINGS,
    Setting,
    flag_values,
    markdown_table,
    readme_block,
    rewrite_readme,
)

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[2] / "README.md"
NOT_SETTINGS = {"project_dir", "env", "functions"}  # the project itself, not settings

# The `fnd serve` flags of the release before the table: none may disappear or change meaning.
FLAGS_BEFORE = {
    "--port", "--unix", "--host", "--config", "--workers-min", "--workers-max", "--timeout",
    "--allow-broken", "--isolation", "--dev", "--no-signatures", "--strict", "--log-format",
    "--control", "--metrics-port", "--header-timeout", "--keepalive-timeout",
    "--max-request-body", "--max-response-body",
}


def _annotation(setting: Setting) -> object:
    kind: object = tuple[str, ...] if setting.kind is tuple else setting.kind
    return kind | None if setting.optional else kind  # type: ignore[operator]


def test_config_fields_are_the_declared_settings() -> None:
    fields = {f.name: f for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    assert set(fields) - NOT_SETTINGS == {s.name for s in SETTINGS}
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)
    for setting in SETTINGS:
        assert fields[setting.name].default == setting.default, setting.name
        assert type(fields[setting.name].default) is type(setting.default), setting.name
        assert hints[setting.name] == _annotation(setting), setting.name


def test_readme_table_is_the_declared_one() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count(README_START) == 1 and text.count(README_END) == 1
    start, end = readme_block(text)
    assert text[start:end] == markdown_table(), (
        "README settings table drifted: run `python -m fnd.daemon.settings_table --readme`")


def test_rewrite_readme_replaces_only_the_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_START}\n| stale |\n{README_END}\n\nafter\n")
    assert rewrite_readme(readme)
    assert readme.read_text() == f"# x\n\n{README_START}\n{markdown_table()}{README_END}\n\nafter\n"
    assert not rewrite_readme(readme)


def _serve_flags() -> set[str]:
    commands = next(a for a in _parser()._actions if a.dest == "command")
    serve = commands.choices["serve"]  # type: ignore[index]
    return {option for a in serve._actions for option in a.option_strings} - {"-h", "--help"}


def test_serve_flags_are_the_declared_ones_and_keep_those_of_before() -> None:
    declared = {s.flag_name for s in SETTINGS if s.flag}
    assert _serve_flags() == declared | {"--config"}
    assert _serve_flags() >= FLAGS_BEFORE


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
    samples = {int: "7", float: "7.5", bool: "true", tuple: "unix,10.0.0.1"}
    strings = {"host": "::1", "isolation": "invocation", "sandbox": "permissive",
               "log_format": "console", "public_url": "https://example.com"}
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
