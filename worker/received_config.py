"""The configuration a worker received from the daemon (the CONFIGURE frame), read once.

The settings among it keep the names of the daemon's `Config` fields (`WorkerSettings`); their
defaults are declared there only, so the daemon always sends them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fnd.protocol.frames import MAX_FRAME
from fnd.protocol.messages import WorkerConfig

# Room for the rest of a RESULT frame (headers, ids) next to the largest body.
_FRAME_HEADROOM = 64 * 1024


@dataclass(frozen=True)
class ReceivedConfig:
    dev: bool
    max_response_body: int
    max_header_bytes: int
    max_header_count: int
    cookie_secure: bool
    twilio_api_base_url: str | None
    max_output: int  # function output per invocation, bytes; 0: no cap
    project_dir: str = ""
    deps_dir: str = ""
    functions: dict[str, str] = field(default_factory=dict)
    sources: dict[str, bytes] = field(default_factory=dict)
    assets: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: WorkerConfig) -> ReceivedConfig:
        return cls(
            dev=config["dev"],
            # A body that cannot fit in one frame could never be delivered: cap it here.
            max_response_body=min(config["max_response_body"], MAX_FRAME - _FRAME_HEADROOM),
            max_header_bytes=config["max_header_bytes"],
            max_header_count=config["max_header_count"],
            cookie_secure=config["cookie_secure"],
            twilio_api_base_url=config["twilio_api_base_url"] or None,
            max_output=config["max_output"],
            project_dir=config.get("project_dir", ""),
            deps_dir=config.get("deps_dir", ""),
            functions=dict(config.get("functions", {})),
            sources=dict(config.get("sources", {})),
            assets=dict(config.get("assets", {})),
        )

    def display_path(self, file: str) -> str:
        """A function file as shown in 500 bodies: relative to the project, not the host."""
        root = self.project_dir.rstrip("/")
        if root and file.startswith(root + "/"):
            return file[len(root) + 1 :]
        return file
