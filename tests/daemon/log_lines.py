"""A structlog-like logger for unit tests: it keeps each line's event, level and fields."""

from __future__ import annotations

from typing import Any


class LogLines:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.bound: dict[str, Any] = {}  # what bind() added: on every line

    def bind(self, **fields: Any) -> LogLines:
        self.bound.update(fields)
        return self

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, "level": "info", **self.bound, **fields})

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, "level": "warning", **self.bound, **fields})
