"""The symlink `fnd deploy` switches (fnd/ctl/release_link.py): atomic, never over a folder,
the previous release recorded next to it; and how the command line names it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fnd.ctl.deploy import link_name
from fnd.ctl.release_link import LinkError, ReleaseLink

pytestmark = pytest.mark.unit


def _root(tmp_path: Path) -> ReleaseLink:
    for name in ("one", "two"):
        (tmp_path / "releases" / name).mkdir(parents=True)
    return ReleaseLink(tmp_path, "project")


def test_a_switch_replaces_the_link_and_leaves_no_temporary_name(tmp_path: Path) -> None:
    link = _root(tmp_path)
    assert link.current() is None and link.previous() is None
    link.switch(str(tmp_path / "releases" / "one"))
    link.switch(str(tmp_path / "releases" / "two"))
    link.record_previous(str(tmp_path / "releases" / "one"))
    assert link.current() == str(tmp_path / "releases" / "two")
    assert link.previous() == str(tmp_path / "releases" / "one")
    assert sorted(os.listdir(tmp_path)) == ["project", "project.previous", "releases"]


def test_a_relative_target_resolves_against_the_root(tmp_path: Path) -> None:
    link = _root(tmp_path)
    (tmp_path / "project").symlink_to("releases/one")
    assert link.current() == "releases/one"
    assert link.resolve("releases/one") == tmp_path / "releases" / "one"


def test_a_real_folder_at_the_link_is_refused_and_never_replaced(tmp_path: Path) -> None:
    link = _root(tmp_path)
    (tmp_path / "project" / "functions").mkdir(parents=True)
    with pytest.raises(LinkError, match=r"is a folder, not a symlink.*mv .*/project "
                                        r".*/releases/project-first && fnd deploy --root"):
        link.current()
    with pytest.raises(LinkError, match="is a folder, not a symlink"):
        link.switch(str(tmp_path / "releases" / "one"))  # rename(2) refuses it too
    assert (tmp_path / "project" / "functions").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["project", "releases"]


def test_a_file_where_the_previous_record_goes_is_not_taken_for_one(tmp_path: Path) -> None:
    link = _root(tmp_path)
    (tmp_path / "project.previous").write_text("releases/one")
    with pytest.raises(LinkError, match="project.previous is not a symlink"):
        link.previous()


def test_the_link_is_the_instance_name_unless_named() -> None:
    assert link_name(None, None) == "project"
    assert link_name("shop", None) == "shop"
    assert link_name("shop", "shop-blue") == "shop-blue"
    assert link_name("/run/fnd/x/control.sock", None) == "project"  # a socket path, not a name
    for bad in ("../etc", ".hidden", "a/b", ".."):
        with pytest.raises(LinkError):
            link_name(None, bad)
