"""The worker's view of its configuration: WorkerConfig resolved once, with defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from fnd.protocol.frames import MAX_FRAME
from fnd.protocol.messages import WorkerConfig

# Room for the rest of a RESULT frame (headers, ids) next to the largest body.
_FRAME_HEADROOM = 64 * 1024


@dataclass(frozen=True)
class Settings:
    project_dir: str = ""
    deps_dir: str = ""
    functions: dict[str, str] = field(default_factory=dict)
    sources: dict[str, bytes] = field(default_factory=dict)
    assets: dict[str, str] = field(default_factory=dict)
    dev: bool = False
    max_body: int = 4 * 1024 * 1024
    max_header_bytes: int = 15 * 1024
    max_header_count: int = 90
    cookie_secure_default: bool = True
    twilio_api_base_url: str | None = None
    max_output: int = 1024 * 1024  # function output per invocation, bytes; 0: no cap

    @classmethod
    def from_config(cls, config: WorkerConfig) -> Settings:
        base = cls()
        max_body = config.get("max_body", base.max_body)
        return cls(
            project_dir=config.get("project_dir", ""),
            deps_dir=config.get("deps_dir", ""),
            functions=dict(config.get("functions", {})),
            sources=dict(config.get("sources", {})),
            assets=dict(config.get("assets", {})),
            dev=bool(config.get("dev", False)),
            # A body that cannot fit in one frame could never be delivered: cap it here.
            max_body=min(max_body, MAX_FRAME - _FRAME_HEADROOM),
            max_header_bytes=config.get("max_header_bytes", base.max_header_bytes),
            max_header_count=config.get("max_header_count", base.max_header_count),
            cookie_secure_default=config.get("cookie_secure_default", True),
            twilio_api_base_url=config.get("twilio_api_base_url") or None,
            max_output=config.get("max_output", base.max_output),
        )

    def display_path(self, file: str) -> str:
        """A function file as shown in 500 bodies: relative to the project, not the host."""
        root = self.project_dir.rstrip("/")
        if root and file.startswith(root + "/"):
            return file[len(root) + 1 :]
        return file
