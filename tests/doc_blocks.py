"""The shell blocks of docs/operating.md that `scripts/vm test` runs: each is the ```sh block
right under a `<!-- vm: STEP -->` line."""

from __future__ import annotations

import re
from pathlib import Path

OPERATING = Path(__file__).resolve().parents[1] / "docs" / "operating.md"
# The steps, in the order they run (the page shows "Deploying" in section 1, before the
# service that a deploy reloads exists).
STEPS = ("install", "service", "socket", "nginx", "deploy", "rollback", "instances")
MARKER = re.compile(r"^<!-- vm: (\S+) -->$", re.M)
_BLOCK = re.compile(r"```sh\n(.*?)^```$", re.M | re.S)


def vm_blocks(text: str | None = None) -> dict[str, list[str]]:
    """STEP -> the blocks marked with it, in page order; a marker not directly above a
    ```sh block maps to an empty string, so that a test can name it."""
    text = OPERATING.read_text() if text is None else text
    found: dict[str, list[str]] = {}
    for marker in MARKER.finditer(text):
        block = _BLOCK.match(text, marker.end() + 1)
        found.setdefault(marker.group(1), []).append(block.group(1) if block else "")
    return found
