"""`fnd deploy`: serve a release folder that is already on the server, or the previous one.

One command for the whole deploy: check the release, switch the project symlink to it
atomically, reload the running daemon, and when the reload fails switch back, so that the
symlink always names the code that serves (docs/operating.md "Deploying").
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnd.ctl.client import request
from fnd.ctl.release_link import DEFAULT_ROOT, LinkError, ReleaseLink

__all__ = ["DEFAULT_ROOT", "DESCRIPTION", "DeployArgs", "deploy"]
RELOAD_TIMEOUT = 300.0  # a reload answers when the new workers are warm, or have failed
EXIT_FAILED = 1
EXIT_UNREACHABLE = 4

DESCRIPTION = """\
Serve RELEASE_DIR (a project folder already on this server): check it as a reload would,
point the symlink ROOT/LINK at it atomically, and reload the running daemon. When the
reload fails, the symlink is switched back and the previous code keeps serving. A release
with problems changes nothing: they are printed, one a line, and the exit code is 1.

The release LINK pointed at before is recorded as the symlink ROOT/LINK.previous;
--rollback deploys that one (twice: back where you were).

With an instance NAME (fnd@NAME.service), LINK defaults to NAME (/srv/fnd/NAME) and the
daemon is the instance's. With no daemon answering on the control socket nothing is
changed (exit 4), unless --no-reload.

Exit code: 0 deployed; 1 refused or failed (the previous code serves); 2 usage;
4 no daemon answers (nothing changed).
"""


@dataclass(frozen=True)
class DeployArgs:
    release: str | None  # None with rollback
    rollback: bool
    name: str | None  # instance name, or a socket path
    control: str  # the control socket it resolves to
    root: str
    link: str | None
    reload: bool


def link_name(name: str | None, link: str | None) -> str:
    """--link, else the instance NAME (fnd@NAME serves /srv/fnd/NAME), else `project`."""
    chosen = link or (name if name and "/" not in name else "project")
    if "/" in chosen or chosen in (".", "..") or chosen.startswith("."):
        raise LinkError(f"--link {chosen!r} is not a name in ROOT")
    return chosen


def deploy(args: DeployArgs) -> int:
    try:
        link = ReleaseLink(Path(os.path.abspath(args.root)), link_name(args.name, args.link))
        with link.locked():
            return _Deploy(args, link).run()
    except LinkError as exc:
        _say(f"fnd deploy: {exc}")
        return EXIT_FAILED


class _Deploy:
    def __init__(self, args: DeployArgs, link: ReleaseLink) -> None:
        self.args = args
        self.link = link
        self.current = link.current()  # as written in the link; None: no link yet

    def run(self) -> int:
        release, target = self._release()
        if release is None:
            return EXIT_FAILED
        from fnd.ctl.deploy_preflight import check_release  # the daemon's modules: heavy

        found = check_release(release)
        if found.problems:
            _say(f"fnd: deploy refused: {len(found.problems)} problem(s) in {release}")
            for problem in found.problems:
                _say(f"  {problem}")
            _say(f"fnd: nothing changed: {self._where()}")
            return EXIT_FAILED
        if not self.args.reload:
            self._switch(target)
            self._record_previous(release)
            print(f"{release} is in place: {self.link.path} -> {target} (not reloaded: a "
                  f"running daemon serves its code until fnd reload, a starting one serves it)")
            return _not_served(found.not_served)
        refusal = self._daemon_refusal()
        if refusal is not None:
            return refusal
        self._switch(target)
        failure = self._reload(release)
        if failure is not None:
            self._switch_back()
            back = (f"switched back to {self.current}" if self.current is not None
                    else f"removed {self.link.path} again")
            _say(f"fnd: deploy failed: {failure}; {back}; the previous code keeps serving")
            return EXIT_FAILED
        self._record_previous(release)
        previous = self.link.previous()
        print(f"deployed {release}: {self.link.path} -> {target}"
              + (f" (previous: {previous}; fnd deploy --rollback returns to it)"
                 if previous else ""))
        return _not_served(found.not_served)

    def _release(self) -> tuple[Path | None, str]:
        """The release to serve (absolute, symlinks resolved) and the link target to write."""
        if not self.args.rollback:
            assert self.args.release is not None
            release = Path(os.path.realpath(self.args.release))
            return release, str(release)
        previous = self.link.previous()
        if previous is None:
            _say(f"fnd deploy: nothing to roll back to: {self.link.previous_path} does not exist "
                 f"(a deploy that replaces a release records it there)")
            return None, ""
        return self.link.resolve(previous), previous

    def _daemon_refusal(self) -> int | None:
        """None when the daemon answers and serves this link; else the exit code, said."""
        try:
            answer = _ask(self.args.control, {"cmd": "status"}, 30.0)
        except (OSError, ValueError, TimeoutError) as exc:
            _say(f"fnd: deploy refused: no daemon answers on {self.args.control} ({exc}); "
                 f"nothing changed. Start it first, or switch without a reload: "
                 f"fnd deploy --no-reload ...")
            return EXIT_UNREACHABLE
        serving = str(answer.get("project", ""))
        expected = os.path.realpath(self.link.path)  # the link itself when there is none yet
        if serving != expected:
            _say(f"fnd: deploy refused: the daemon on {self.args.control} serves {serving}, "
                 f"not {self.link.path} ({expected}): it would not see the switch; name its "
                 f"link with --link or its daemon with NAME / --control. Nothing changed.")
            return EXIT_FAILED
        return None

    def _reload(self, release: Path) -> str | None:
        """None when the daemon now serves `release`; else why not (said in full)."""
        try:
            answer = _ask(self.args.control, {"cmd": "reload"}, RELOAD_TIMEOUT)
        except (OSError, ValueError, TimeoutError) as exc:
            return (f"the reload did not answer ({exc or type(exc).__name__}); run fnd reload "
                    f"after this to be sure the daemon serves the previous release")
        if not answer.get("ok"):
            _say(f"fnd: reload failed: {answer.get('error')}")
            for problem in answer.get("problems") or []:
                _say(f"  {problem}")
            return f"the daemon refused {release}"
        try:
            serving = str(_ask(self.args.control, {"cmd": "status"}, 30.0).get("project"))
        except (OSError, ValueError, TimeoutError) as exc:
            return f"the daemon did not answer after its reload ({exc})"
        if serving != str(release):
            return (f"the daemon reloaded {serving}, not {release}: it was started on that "
                    f"folder rather than on {self.link.path}, so a switch never reaches it")
        return None

    def _switch(self, target: str) -> None:
        if self.current is None or self.link.resolve(self.current) != self.link.resolve(target):
            self.link.switch(target)

    def _switch_back(self) -> None:
        if self.current is not None:
            self.link.switch(self.current)
        else:  # there was no link before this deploy
            os.unlink(self.link.path)

    def _record_previous(self, release: Path) -> None:
        """The release that was served before, unless this deploy served it again."""
        if self.current is not None and self.link.resolve(self.current) != release:
            self.link.record_previous(self.current)

    def _where(self) -> str:
        if self.current is None:
            return f"there is no {self.link.path} yet"
        return f"{self.link.path} still points at {self.current}"


def _ask(path: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    return asyncio.run(request(path, payload, timeout))


def _not_served(problems: list[str]) -> int:
    """allow_broken: the release serves, these functions answer 500 until a fix."""
    for problem in problems:
        _say(f"  not served: {problem}")
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr)
