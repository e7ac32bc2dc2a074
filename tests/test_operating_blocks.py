"""docs/operating.md keeps a marked, runnable block for every step `scripts/vm test` runs:
no step can lose its marker, or gain an editor step or a placeholder, silently."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.doc_blocks import OPERATING, STEPS, vm_blocks

SITE = OPERATING.parents[1] / "systemd" / "nginx-fnd.conf"


@pytest.mark.unit
def test_every_step_has_one_marked_block_and_nothing_else_is_marked() -> None:
    blocks = vm_blocks()
    assert sorted(blocks) == sorted(STEPS)
    for step in STEPS:
        assert len(blocks[step]) == 1, f"{step}: {len(blocks[step])} blocks marked"
        assert blocks[step][0].strip(), f"<!-- vm: {step} --> is not right above a ```sh block"


@pytest.mark.unit
def test_marked_blocks_run_as_they_stand() -> None:
    for step, (block,) in vm_blocks().items():
        for word in ("$EDITOR", "/path/to", "my-project", "build/", "mv -T", "ln -sfn"):
            assert word not in block, f"{step}: {word!r} cannot run as it stands"


@pytest.mark.unit
def test_the_install_makes_the_release_layout_from_a_copy_of_the_source() -> None:
    blocks = {step: found[0] for step, found in vm_blocks().items()}
    install = blocks["install"]
    assert "$(mktemp -d)" in install and 'cp -r /usr/local/src/fnd/. "$build"' in install
    assert "ln -sf /opt/fnd-venv/bin/fnd /usr/local/bin/fnd" in install
    assert "cp -r /usr/local/src/fnd/examples/hello /srv/fnd/releases/" in install
    assert "fnd deploy --no-reload /srv/fnd/releases/" in install
    # Never a real project folder: the deploy step would then refuse to switch it.
    assert not re.search(r"^(?:cp|mkdir|mv|install)\b.*/srv/fnd/project\b", install, re.M)
    assert "\nfnd deploy /srv/fnd/releases/2026-12-02-1\n" in blocks["deploy"]
    assert "fnd deploy --rollback" in blocks["rollback"]
    assert 'fnd deploy --no-reload "/srv/fnd/releases/$name-' in blocks["instances"]


@pytest.mark.unit
def test_the_nginx_step_edits_what_the_shipped_site_holds() -> None:
    site = SITE.read_text()
    nginx = vm_blocks()["nginx"][0]
    assert "s|unix:/run/fnd/shop/http.sock|unix:/run/fnd/http.sock|" in nginx
    assert "server unix:/run/fnd/shop/http.sock;" in site
    assert "'/^# The second project/,$d'" in nginx
    assert "\n# The second project" in site


@pytest.mark.unit
def test_a_lost_marker_is_seen() -> None:
    text = OPERATING.read_text().replace("<!-- vm: rollback -->\n", "")
    assert "rollback" not in vm_blocks(text)
    moved = OPERATING.read_text().replace("<!-- vm: deploy -->\n```sh",
                                          "<!-- vm: deploy -->\n\n```sh")
    assert vm_blocks(moved)["deploy"] == [""]


def test_each_marked_block_parses_with_bash() -> None:
    for step, (block,) in vm_blocks().items():
        checked = subprocess.run(["bash", "-n", "-c", block], capture_output=True, text=True,
                                 timeout=30)
        assert checked.returncode == 0, f"{step}: {checked.stderr}"
