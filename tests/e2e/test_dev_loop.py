"""The dev loop and problems reported all at once (docs/handlers.md#the-dev-loop)."""

from __future__ import annotations

from pathlib import Path

from tests.fndserver import running, until

HELLO = "def handler(context, event, callback):\n    callback(None, 'hello')\n"


def test_dev_reload_failure_is_the_next_answer_until_a_reload_works() -> None:
    with running("ops", "--dev", "--workers-min", "1") as fnd:
        assert fnd.get("/hello").text == "hello"
        (fnd.project / "requirements.txt").write_text("left-pad==1.0\n")  # not installed
        (fnd.project / "functions" / "oops.py").write_text("def handler(:\n")
        until(lambda: fnd.get("/hello").status_code == 500, what="the failed reload's 500")
        text = fnd.get("/hello").text
        assert "the last reload failed" in text, text
        assert "requirements.txt is not installed" in text, text  # every problem, one a line
        assert "functions/oops.py:1: SyntaxError" in text, text
        fnd.wait_for(lambda line: line.get("event") == "reload failed"
                     and len(line.get("problems") or []) == 2)
        (fnd.project / "requirements.txt").unlink()
        (fnd.project / "functions" / "oops.py").write_text(HELLO)
        until(lambda: fnd.get("/hello").status_code == 200, what="serving again")
        assert fnd.get("/oops").text == "hello"


def test_dev_picks_up_fnd_toml_edits_and_shows_a_bad_one() -> None:
    with running("ops", "--dev", "--workers-min", "1") as fnd:  # no flag wins over fnd.toml
        before = fnd.status()["workers"]["max"]
        toml = fnd.project / "fnd.toml"
        toml.write_text(f"workers_max = {before + 1}\n")
        until(lambda: fnd.status()["workers"]["max"] == before + 1,
              what="workers_max from fnd.toml")
        toml.write_text("workers_max = \"many\"\n")  # a typo: the next answer says so
        until(lambda: fnd.get("/hello").status_code == 500, what="the bad fnd.toml's 500")
        assert "workers_max" in fnd.get("/hello").text
        toml.write_text(f"workers_max = {before + 2}\n")
        until(lambda: fnd.get("/hello").status_code == 200, what="serving again")
        assert fnd.status()["workers"]["max"] == before + 2


def test_three_different_problems_are_reported_in_one_attempt(tmp_path: Path) -> None:
    functions = tmp_path / "project" / "functions"
    functions.mkdir(parents=True)
    (functions / "syntax.py").write_text("def handler(:\n")
    (functions / "imports.py").write_text("import no_such_module_fnd\n" + HELLO)
    (functions / "nohandler.py").write_text("x = 1\n")
    (functions / "good.py").write_text(HELLO)
    with running(tmp_path / "project", ready=False) as server:
        line = server.wait_for(lambda entry: entry.get("event") == "cannot start")
        assert server.process.wait(30) == 1
    reason = str(line["reason"])
    assert reason.startswith("3 problem(s)"), reason
    problems = reason.split("\n")[1:]
    assert len(problems) == 3, reason  # each on its own line
    assert any("syntax.py:1: SyntaxError" in p for p in problems), reason
    assert any("imports.py" in p and "no_such_module_fnd" in p for p in problems), reason
    assert any("nohandler.py defines no handler" in p for p in problems), reason
    logged = [entry for entry in server.lines
              if entry.get("event") in ("project problem", "function problem")]
    assert len(logged) == 3, logged


RETURNS = "def handler(context, event, callback):\n    return None  # forgot callback\n"


def test_a_504_in_dev_says_the_handler_returned_without_calling_callback(tmp_path: Path) -> None:
    functions = tmp_path / "project" / "functions"
    functions.mkdir(parents=True)
    (functions / "forgot.py").write_text(RETURNS)
    for dev in (True, False):
        flags = ["--dev"] if dev else []
        with running(tmp_path / "project", *flags, "--workers-min", "1", "--timeout", "1") as fnd:
            response = fnd.get("/forgot")
            assert response.status_code == 504
            assert response.text.startswith("function timed out after 1 s")
            # production is unchanged: no hint, no new frame
            assert ("returned without calling callback" in response.text) is dev, response.text
