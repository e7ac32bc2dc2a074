"""tests/vm/doc-block, which hands docs/operating.md's shell blocks to the VM test
(scripts/vm): every step the guest runs is marked in the doc, and a missing, doubled or
misplaced marker fails loudly instead of skipping the step."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC_BLOCK = ROOT / "tests" / "vm" / "doc-block"
DOC = ROOT / "docs" / "operating.md"
STEPS = ("install", "service", "socket", "nginx", "deploy", "rollback", "instances")


def extract(step: str, doc: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DOC_BLOCK), step, str(doc)], capture_output=True, text=True,
                          timeout=30)


def test_every_step_the_vm_runs_is_a_shell_block_of_the_doc() -> None:
    text = DOC.read_text()
    for step in STEPS:
        result = extract(step, DOC)
        assert result.returncode == 0, result.stderr
        block = result.stdout
        assert block.strip() and "```" not in block
        assert block in text  # copied, not retyped


def test_the_guest_test_runs_the_marked_steps_and_the_install_runs_before_boot() -> None:
    guest = (ROOT / "tests" / "vm" / "guest-test").read_text()
    run_in_guest = re.findall(r"^run_step (\w+)$", guest, re.MULTILINE)
    assert sorted([*run_in_guest, "install"]) == sorted(STEPS)
    assert "doc-block install" in (ROOT / "scripts" / "vm").read_text()


def test_a_missing_marker_fails_naming_the_step(tmp_path: Path) -> None:
    doc = tmp_path / "operating.md"
    doc.write_text("# Operating\n\n```sh\necho hi\n```\n")
    result = extract("socket", doc)
    assert result.returncode != 0 and result.stdout == ""
    assert '"<!-- vm: socket -->" marker' in result.stderr


def test_a_marker_not_directly_above_a_sh_block_fails(tmp_path: Path) -> None:
    doc = tmp_path / "operating.md"
    doc.write_text("<!-- vm: nginx -->\nSome words.\n\n```sh\nnginx -t\n```\n")
    result = extract("nginx", doc)
    assert result.returncode != 0 and "not directly above" in result.stderr


def test_a_doubled_marker_or_an_unclosed_block_fails(tmp_path: Path) -> None:
    doc = tmp_path / "operating.md"
    block = "<!-- vm: deploy -->\n```sh\nfnd deploy x\n```\n"
    doc.write_text(block + block)
    assert "marked twice" in extract("deploy", doc).stderr
    doc.write_text("<!-- vm: deploy -->\n```sh\nfnd deploy x\n")
    result = extract("deploy", doc)
    assert result.returncode != 0 and "not closed" in result.stderr


def test_the_block_is_printed_as_written(tmp_path: Path) -> None:
    doc = tmp_path / "operating.md"
    doc.write_text("<!-- vm: service -->\n```sh\nsystemctl enable --now fnd   # a comment\n"
                   "  indented \\\n  continued\n```\n")
    result = extract("service", doc)
    assert result.returncode == 0
    assert result.stdout == "systemctl enable --now fnd   # a comment\n  indented \\\n  continued\n"
