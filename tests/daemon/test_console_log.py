"""The console log format prints multi-line values as lines; JSON lines stay one object."""

from __future__ import annotations

import json

import pytest
import structlog

from fnd.daemon.logs import MultilineConsole

pytestmark = pytest.mark.unit  # no processes, no network

TRACEBACK = 'Traceback (most recent call last):\n  File "f.py", line 1\nValueError: x\n'


def test_a_traceback_prints_as_real_lines_under_its_line() -> None:
    render = MultilineConsole(structlog.dev.ConsoleRenderer(colors=False))
    text = render(None, "error", {"event": "invocation", "status": 500, "traceback": TRACEBACK})
    lines = text.split("\n")
    assert "invocation" in lines[0] and "status=500" in lines[0]
    assert "\\n" not in text and "traceback=" not in lines[0]
    assert lines[1:] == ["  traceback:", "    Traceback (most recent call last):",
                         '      File "f.py", line 1', "    ValueError: x"]


def test_a_problems_list_prints_one_problem_a_line() -> None:
    render = MultilineConsole(structlog.dev.ConsoleRenderer(colors=False))
    text = render(None, "error", {"event": "reload failed", "problems": ["a.py: x", "b.py: y"]})
    assert text.split("\n")[1:] == ["  problems:", "    - a.py: x", "    - b.py: y"]


def test_json_lines_are_unchanged() -> None:
    line = structlog.processors.JSONRenderer()(None, "error", {"traceback": TRACEBACK})
    assert "\n" not in line and json.loads(line)["traceback"] == TRACEBACK
