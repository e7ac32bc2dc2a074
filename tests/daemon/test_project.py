"""Project folder → route table (docs/handlers.md#a-function-file).

One fixture folder per scenario.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

from fnd.daemon.project import Project, ProjectError, Route, route_table_lines, scan_project

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures"


def scan(name: str) -> Project:
    return scan_project(FIXTURES / name)


def summary(table: Mapping[str, Route]) -> dict[str, tuple[str, str]]:
    return {path: (r.kind, r.visibility) for path, r in table.items()}


# --- basic mapping -------------------------------------------------------------------------


def test_basic_functions() -> None:
    p = scan("basic")
    assert summary(p.functions) == {
        "/hello": ("function", "public"),
        "/a/b": ("function", "public"),
        "/secret": ("function", "protected"),
        "/helper": ("function", "private"),
    }
    assert p.problems == ()


def test_basic_assets_keep_extension() -> None:
    p = scan("basic")
    assert summary(p.assets) == {
        "/img/logo.png": ("asset", "public"),
        "/style.css": ("asset", "public"),
        "/LICENSE": ("asset", "public"),
        "/data.txt": ("asset", "private"),
        "/x.png": ("asset", "protected"),
        "/archive.tar.gz": ("asset", "private"),
    }


def test_routes_hold_only_served_paths() -> None:
    p = scan("basic")
    assert sorted(p.routes) == [
        "/LICENSE", "/a/b", "/hello", "/img/logo.png", "/secret", "/style.css", "/x.png",
    ]


def test_route_fields() -> None:
    p = scan("basic")
    root = (FIXTURES / "basic").resolve()
    route = p.functions["/a/b"]
    st = (root / "functions/a/b.py").stat()
    assert route == Route(
        path="/a/b", kind="function", visibility="public", file=root / "functions/a/b.py",
        error=None, source="functions/a/b.py", device=st.st_dev, inode=st.st_ino,
    )
    assert route.name == "a/b"
    assert p.assets["/data.txt"].file == root / "assets/data.private.txt"
    assert p.root == root


def test_ignored_files() -> None:
    p = scan("basic")
    everything = set(p.functions) | set(p.assets)
    # dotfiles, dot-folders, non-.py files under functions/, and the root's .env
    for ignored in ("/.hidden", "/.dir/x", "/notes", "/notes.txt", "/legacy", "/.hidden.txt",
                    "/.env"):
        assert ignored not in everything


def test_pycache_ignored(tmp_path: Path) -> None:
    (tmp_path / "functions/__pycache__").mkdir(parents=True)
    (tmp_path / "functions/__pycache__/x.py").write_text("x = 1\n")
    (tmp_path / "assets/__pycache__").mkdir(parents=True)
    (tmp_path / "assets/__pycache__/x.cpython-311.pyc").write_bytes(b"\0")
    p = scan_project(tmp_path)
    assert dict(p.functions) == {} and dict(p.assets) == {} and p.problems == ()


def test_tables_are_immutable() -> None:
    p = scan("basic")
    with pytest.raises(TypeError):
        p.routes["/new"] = p.routes["/hello"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        p.problems = ("x",)  # type: ignore[misc]


def test_lookup_exact_and_case_sensitive() -> None:
    p = scan("basic")
    hello = p.lookup("/hello")
    assert hello is not None and hello.kind == "function"
    for miss in ("/Hello", "/hello/", "/hello.py", "/a/b/", "/a", "hello", "", "/",
                 "/img/logo", "/x.protected.png", "/data.private.txt", "/a/../hello",
                 "/img/../style.css", "//hello", "/hello?x=1"):
        assert p.lookup(miss) is None, miss


def test_empty_or_missing_folders(tmp_path: Path) -> None:
    p = scan_project(tmp_path)
    assert dict(p.routes) == {} and p.problems == () and p.index() is None


def test_root_errors(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="cannot be read"):
        scan_project(tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(ProjectError, match="not a directory"):
        scan_project(tmp_path / "file")


# --- private / protected -------------------------------------------------------------------


def test_private_and_protected() -> None:
    p = scan("private_protected")
    assert summary(p.functions) == {
        "/pub": ("function", "public"),
        "/prot": ("function", "protected"),
        "/priv": ("function", "private"),
        "/nested/deep": ("function", "protected"),
        "/nested/inner": ("function", "private"),
    }
    assert summary(p.assets) == {
        "/pub.txt": ("asset", "public"),
        "/prot.txt": ("asset", "protected"),
        "/priv.txt": ("asset", "private"),
    }
    # private: listed for Runtime, never served
    for private in ("/priv", "/nested/inner", "/priv.txt"):
        assert p.lookup(private) is None
    for served in ("/pub", "/prot", "/nested/deep", "/pub.txt", "/prot.txt"):
        assert p.lookup(served) is not None
    assert p.problems == ()


def test_marker_only_between_name_and_extension(tmp_path: Path) -> None:
    (tmp_path / "functions").mkdir()
    (tmp_path / "assets").mkdir()
    (tmp_path / "functions/protected.py").write_text("x = 1\n")  # the name itself
    (tmp_path / "functions/a.b.private.py").write_text("x = 1\n")
    (tmp_path / "assets/x.private").write_text("")  # the extension is not a marker
    (tmp_path / "assets/private.txt").write_text("")
    p = scan_project(tmp_path)
    assert summary(p.functions) == {
        "/protected": ("function", "public"), "/a.b": ("function", "private"),
    }
    assert summary(p.assets) == {
        "/x.private": ("asset", "public"), "/private.txt": ("asset", "public"),
    }


# --- conflicts -----------------------------------------------------------------------------


def test_conflicts_drop_every_route_and_name_the_files() -> None:
    p = scan("conflicts")
    assert sorted(p.functions) == ["/fine"]
    assert dict(p.assets) == {}
    assert sorted(p.routes) == ["/fine"]
    assert list(p.problems) == [
        "path conflict: functions/a b.py, functions/a-b.py all map to /a-b; none is served",
        "path conflict: functions/dup.protected.py, functions/dup.py all map to /dup; "
        "none is served",
        "path conflict: assets/same, functions/same.py all map to /same; none is served",
        "path conflict: assets/x.private.txt, assets/x.txt all map to /x.txt; none is served",
    ]


# --- bad syntax ----------------------------------------------------------------------------


def test_bad_syntax_reported_and_routed_with_error() -> None:
    p = scan("bad_syntax")
    broken = p.lookup("/broken")
    indent = p.lookup("/indent")
    good = p.lookup("/good")
    assert broken is not None and indent is not None and good is not None
    assert broken.error == "functions/broken.py:3: SyntaxError: invalid syntax"
    assert indent.error == (
        "functions/indent.py:2: IndentationError: expected an indented block after function "
        "definition on line 1"
    )
    assert good.error is None
    assert set(p.problems) == {broken.error, indent.error}


def test_unparseable_bytes(tmp_path: Path) -> None:
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions/nul.py").write_bytes(b"x = 1\0\n")
    (tmp_path / "functions/latin.py").write_bytes(b"x = '\xe9'\n")
    (tmp_path / "functions/coding.py").write_bytes(b"# -*- coding: latin-1 -*-\nx = '\xe9'\n")
    (tmp_path / "functions/deep.py").write_text("x = " + "(" * 300 + ")" * 300 + "\n")
    p = scan_project(tmp_path)
    nul, latin, coding, deep = (p.functions[k] for k in ("/nul", "/latin", "/coding", "/deep"))
    assert nul.error is not None and nul.error.startswith("functions/nul.py")
    assert latin.error is not None and latin.error.startswith("functions/latin.py:1: ")
    assert coding.error is None  # PEP 263 is honoured
    assert deep.error is not None and deep.error.startswith("functions/deep.py")
    assert len(p.problems) == 3


# --- invalid paths and whitespace ----------------------------------------------------------


def test_invalid_paths() -> None:
    p = scan("invalid_paths")
    assert sorted(p.functions) == ["/ok_name-1.2~x"]
    assert dict(p.assets) == {}
    problems = sorted(p.problems)
    assert len(problems) == 5
    for source in ("assets/100%.txt", "functions/a+b.py", "functions/café.py", "functions/q?.py"):
        assert any(pr.startswith(f"{source}: invalid path") for pr in problems), source
    assert "assets/two.private.protected.txt: more than one visibility marker in the file name" \
        in problems
    assert any("segment 'café'" in pr for pr in problems)


def test_dot_segments_are_invalid(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets/x..").write_text("")  # name "x.." is fine: it is not a dot segment
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions/...py").write_text("x = 1\n")  # dotfile: ignored
    p = scan_project(tmp_path)
    assert sorted(p.assets) == ["/x.."] and dict(p.functions) == {}


def test_undecodable_file_name(tmp_path: Path) -> None:
    (tmp_path / "functions").mkdir()
    with open(os.path.join(os.fsencode(tmp_path), b"functions", b"bad\xff.py"), "w") as f:
        f.write("x = 1\n")
    p = scan_project(tmp_path)
    assert dict(p.functions) == {}
    assert len(p.problems) == 1
    problem = p.problems[0]
    problem.encode("utf-8")  # printable: no surrogates leak into messages
    assert problem.startswith("functions/bad\ufffd.py: invalid path")


def test_whitespace_becomes_dash() -> None:
    p = scan("whitespace")
    assert summary(p.functions) == {
        "/hello-world": ("function", "public"),
        "/my-dir/sub-fn": ("function", "protected"),
    }
    assert summary(p.assets) == {"/my--file.txt": ("asset", "public")}
    assert p.functions["/hello-world"].source == "functions/hello world.py"
    assert p.problems == ()


def test_tab_and_newline_in_names(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets/a\tb\nc.txt").write_text("")
    assert sorted(scan_project(tmp_path).assets) == ["/a-b-c.txt"]


# --- symlinks ------------------------------------------------------------------------------


def test_symlinks() -> None:
    p = scan("symlinks")
    root = (FIXTURES / "symlinks").resolve()
    assert sorted(p.functions) == ["/linked", "/plain"]
    assert p.functions["/linked"].file == root / "shared/lib.py"
    assert sorted(p.assets) == ["/inside.txt", "/shared/inside.txt", "/shared/lib.py"]
    assert p.assets["/inside.txt"].file == root / "shared/inside.txt"
    problems = sorted(p.problems)
    outside = (FIXTURES / "_outside").resolve()
    assert problems == sorted([
        "assets/broken.txt: broken symlink",
        "assets/config.txt: refused: resolves to fnd.toml, a hidden or configuration file "
        "of the project",
        "assets/env.txt: refused: resolves to .env, a hidden or configuration file of the "
        "project",
        f"assets/escape.txt: refused: resolves to {outside}/secret.txt, outside the project "
        "folder",
        "assets/loop: refused: symlink loop",
        f"assets/outdir: refused: resolves to {outside}/dir, outside the project folder",
        "functions/dangling.py: broken symlink",
        f"functions/evil.py: refused: resolves to {outside}/evil.py, outside the project "
        "folder",
    ])
    everything = set(p.functions) | set(p.assets)
    for refused in ("/evil", "/escape.txt", "/outdir/file.txt", "/env.txt", "/config.txt",
                    "/broken.txt", "/dangling"):
        assert refused not in everything


def test_functions_folder_linked_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.py").write_text("x = 1\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "functions").symlink_to(outside)
    p = scan_project(project)
    assert dict(p.functions) == {}
    assert p.problems == (
        f"functions: refused: resolves to {outside.resolve()}, outside the project folder",
    )


def test_project_root_may_be_a_symlink(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "basic", tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    p = scan_project(tmp_path / "link")
    assert p.root == (tmp_path / "real").resolve()
    assert sorted(p.functions) == ["/a/b", "/hello", "/helper", "/secret"]
    assert p.problems == ()


def test_fifo_refused(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    os.mkfifo(tmp_path / "assets/pipe.txt")
    p = scan_project(tmp_path)
    assert dict(p.assets) == {}
    assert p.problems == ("assets/pipe.txt: refused: not a regular file",)


# --- index ---------------------------------------------------------------------------------


def test_index_prefers_assets_index() -> None:
    route = scan("index_nested").index()
    assert route is not None and route.path == "/assets/index.html"
    assert route.file.name == "index.html" and route.file.parent.name == "assets"
    assert route.file.parent.parent.name == "assets"


def test_index_falls_back_to_root_index() -> None:
    route = scan("index_root").index()
    assert route is not None and route.path == "/index.html"


def test_index_none_and_functions_do_not_count() -> None:
    p = scan("index_none")
    assert p.lookup("/index.html") is not None  # a function named index.html.py
    assert p.index() is None


def test_index_skips_private(tmp_path: Path) -> None:
    (tmp_path / "assets/assets").mkdir(parents=True)
    (tmp_path / "assets/assets/index.private.html").write_text("")
    (tmp_path / "assets/index.protected.html").write_text("")
    route = scan_project(tmp_path).index()
    assert route is not None and route.path == "/index.html"
    assert route.visibility == "protected"  # the caller checks the signature


# --- start-up listing ----------------------------------------------------------------------


def test_route_table_lines() -> None:
    assert route_table_lines(scan("basic"), "http://localhost:3000") == [
        "Functions:",
        "├── http://localhost:3000/a/b",
        "├── http://localhost:3000/hello",
        "├── /helper [private]",
        "└── http://localhost:3000/secret [protected]",
        "Assets:",
        "├── http://localhost:3000/LICENSE",
        "├── /archive.tar.gz [private]",
        "├── /data.txt [private]",
        "├── http://localhost:3000/img/logo.png",
        "├── http://localhost:3000/style.css",
        "└── http://localhost:3000/x.png [protected]",
    ]


def test_route_table_lines_errors_and_empty() -> None:
    lines = route_table_lines(scan("bad_syntax"))
    assert lines[0] == "Functions:"
    assert "├── /broken [error: functions/broken.py:3: SyntaxError: invalid syntax]" in lines
    assert lines[-1] == "Assets: none"
