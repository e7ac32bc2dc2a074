"""Is the ``fnd`` installed in this interpreter's environment the checkout's code?

End-to-end tests run the installed copy (``python -m fnd.cli``, ``fnd serve``): sandboxed
workers run as other uids and import from the venv, which they can read wherever the
checkout lives. Unit tests import the checkout. This compares the two (every ``.py``,
``.tmpl`` and ``py.typed`` file, by content), so a run never mixes two versions: the suite
refuses to start end-to-end tests against a stale install, and ``scripts/test`` reinstalls
only when this says so. It imports nothing from fnd (that would import the checkout).

Usage: ``python -P tests/install_check.py``: exit 0 when they match; 1, naming what
differs, when they do not.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1] / "fnd"  # fnd/daemon etc. are symlinks
_KINDS = {".py", ".tmpl", ".typed"}


def installed_package() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / "fnd"


def _digests(root: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    if not root.is_dir():
        return found
    # followlinks: fnd/daemon, fnd/worker and fnd/protocol are symlinks in the checkout.
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [name for name in dirs if name != "__pycache__"]
        for name in files:
            path = Path(folder, name)
            if path.suffix in _KINDS:
                found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def difference(checkout: Path = CHECKOUT, installed: Path | None = None) -> str | None:
    """None when the installed package is the checkout's code; else what differs."""
    installed = installed or installed_package()
    mine, theirs = _digests(checkout), _digests(installed)
    if not theirs:
        return f"fnd is not installed in {installed.parent}"
    changed = sorted(name for name in mine.keys() & theirs.keys() if mine[name] != theirs[name])
    added = sorted(mine.keys() - theirs.keys())
    removed = sorted(theirs.keys() - mine.keys())
    parts = [f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
             for label, names in (("changed", changed), ("not installed", added),
                                  ("installed but gone from the checkout", removed)) if names]
    if not parts:
        return None
    return f"the fnd installed in {installed} is not the checkout's code ({'; '.join(parts)})"


def main() -> int:
    problem = difference()
    if problem is None:
        return 0
    print(problem, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
