"""The comments of the code, tests and benchmarks point into docs/ (or the README), and every
pointer leads to a section that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
# fnd/ holds symlinks to the three top-level packages: its own files only (ctl, author, cli).
CODE = [p for top in ("daemon", "worker", "protocol") for p in (ROOT / top).rglob("*.py")]
CODE += [p for p in (ROOT / "fnd").rglob("*.py") if not p.is_relative_to(ROOT / "fnd" / "daemon")
         and not p.is_relative_to(ROOT / "fnd" / "worker")
         and not p.is_relative_to(ROOT / "fnd" / "protocol")]
# The tests and benchmarks too (not this file, which spells the citations it looks for).
HARNESS = [p for folder in ("tests", "bench") for pattern in ("*.py", "*.md")
           for p in (ROOT / folder).rglob(pattern)
           if p.is_file() and not p.is_symlink() and p != Path(__file__).resolve()]
SOURCES = CODE + HARNESS
POINTER = re.compile(r"((?:docs/[a-z_]+|README)\.md)(?:#([a-z0-9-]+))?")
# Citations of documents or issues outside the repository.
OUTSIDE = re.compile(r"SPEC [0-9]|SANDBOX\.md|issue [0-9]")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces → -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    return {_anchor(line.lstrip("#")) for line in lines if re.match(r"#{1,6} ", line)}


def test_anchor_rule() -> None:
    assert _anchor(" `Twilio.Response`") == "twilioresponse"
    assert _anchor(" 4. `fnd status`") == "4-fnd-status"
    assert _anchor(" Strict, permissive, and what fails closed") == (
        "strict-permissive-and-what-fails-closed")


def test_every_docs_pointer_leads_to_a_section() -> None:
    broken = []
    for source in SOURCES:
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            for doc, anchor in POINTER.findall(line):
                path = ROOT / doc
                if not path.is_file() or (anchor and anchor not in _anchors(path)):
                    broken.append(f"{source.relative_to(ROOT)}:{number}: {doc}#{anchor}")
    assert not broken, "\n".join(broken)


def test_no_citation_of_documents_outside_the_repository() -> None:
    cited = [f"{source.relative_to(ROOT)}:{number}: {line.strip()}"
             for source in SOURCES
             for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1)
             if OUTSIDE.search(line)]
    assert not cited, "\n".join(cited)
