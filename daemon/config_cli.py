"""The settings as the command line and the README show them, derived from `Config`.

`add_flags` gives `fnd serve` one flag per setting declared with `flag=True` in
`fnd.daemon.config.Config`; `markdown_table` is the README's settings table, which
`python -m fnd.daemon.config_cli --readme` rewrites (a test fails when it drifts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fnd.daemon.config import SETTINGS, Setting

README_START = "<!-- settings:start -->"
README_END = "<!-- settings:end -->"


def shown_default(setting: Setting) -> str:
    """A setting's default as the README and `--help` show it."""
    if setting.shown is not None:
        return setting.shown
    value = setting.default
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{text} {setting.unit}" if setting.unit else text


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add a `--flag` to `parser` for each setting that has one; unset flags parse as None."""
    exclusive = parser.add_mutually_exclusive_group()
    for setting in SETTINGS:
        if not setting.flag:
            continue
        target = exclusive if setting.exclusive else parser
        help_text = setting.help.replace("`", "").replace("%", "%%")
        if setting.kind is not bool and setting.default is not None:
            help_text += f" (default {shown_default(setting).replace('`', '')})"
        if setting.kind is bool:
            target.add_argument(setting.flag_name, action="store_true", default=None,
                                help=help_text)
        else:
            target.add_argument(setting.flag_name, type=setting.kind, metavar=setting.metavar,
                                choices=setting.choices or None, help=help_text)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The flag settings parsed by `add_flags`, by name (None: not given)."""
    return {s.name: getattr(args, s.name) for s in SETTINGS if s.flag}


def markdown_table() -> str:
    """The README's settings table."""
    lines = ["| setting (`fnd.toml`) | environment | flag | default | meaning |",
             "|---|---|---|---|---|"]
    for s in SETTINGS:
        flag = f"`{s.flag_name}`" if s.flag else "–"
        lines.append(f"| `{s.name}` | `{s.variable}` | {flag} | {shown_default(s)} | {s.help} |")
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> tuple[int, int]:
    """Where the settings table lies in the README's `text`: between the two marker lines."""
    start = text.index(README_START) + len(README_START) + 1
    return start, text.index(README_END, start)


def rewrite_readme(path: Path) -> bool:
    """Put the declared table into the README at `path`; True if it changed."""
    text = path.read_text(encoding="utf-8")
    start, end = readme_block(text)
    updated = text[:start] + markdown_table() + text[end:]
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fnd.daemon.config_cli",
                                     description="Print or write the README's settings table.")
    parser.add_argument("--readme", nargs="?", const="README.md", metavar="PATH",
                        help="rewrite the table in this README (default: README.md)")
    args = parser.parse_args(argv)
    if args.readme is None:
        sys.stdout.write(markdown_table())
        return 0
    changed = rewrite_readme(Path(args.readme))
    print(f"{args.readme}: {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
