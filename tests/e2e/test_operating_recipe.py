"""docs/operating.md, followed as written: install, the unit's command, nginx, a signed request.

The install block is taken from the page and run as it stands, with its paths moved under a
temporary folder (and its `apt-get` lines left to the machine: .ci/run installs packages): it
leaves the source tree as it was, puts `fnd` on PATH and makes the project a symlink to the
first release.
The daemon is started with the unit's own `ExecStart=` (no systemd here), nginx with the
shipped site, and a request signed for nginx's URL must reach the protected function.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import requests
from twilio.request_validator import RequestValidator

from fnd.author.launcher import LogTail
from tests.fndserver import FIXTURES
from tests.nginx import running_nginx

ROOT = Path(__file__).resolve().parents[2]
AUTH_TOKEN = "12345678901234567890123456789012"  # the ops fixture's .env


def _sh_blocks(section: str) -> list[str]:
    """The ```sh blocks of one `## ` section of docs/operating.md."""
    text = (ROOT / "docs" / "operating.md").read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end != -1 else None]
    return re.findall(r"```sh\n(.*?)```", body, re.S)


def test_the_operating_recipe_serves_a_signed_request_through_nginx() -> None:
    prefix = Path(tempfile.mkdtemp(prefix="fnd-recipe-", dir="/tmp"))
    prefix.chmod(0o755)
    project = prefix / "hello"  # the page's example project: the ops fixture here
    shutil.copytree(FIXTURES / "ops", project)
    shutil.copy2(project / ".env", project / ".env.example")
    # pip builds in the source folder (build/, fnd.egg-info): a copy of what scripts/setup-venv
    # installs, so that nothing is left in the checkout.
    source = prefix / "fnd-source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("fnd", "daemon", "worker", "protocol", "docs"):
        shutil.copytree(ROOT / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    before = sorted(str(p.relative_to(source)) for p in source.rglob("*"))
    (prefix / "usr" / "local" / "bin").mkdir(parents=True)
    moved = {"/opt/fnd-venv": f"{prefix}/opt/fnd-venv", "/srv/fnd": f"{prefix}/srv/fnd",
             "/run/fnd": f"{prefix}/run/fnd", "/usr/local/src/fnd/examples/hello": str(project),
             "/usr/local/src/fnd": str(source), "/usr/local/bin": f"{prefix}/usr/local/bin",
             "fnd deploy ": f"fnd deploy --root {prefix}/srv/fnd "}

    def local(text: str) -> str:
        for old, new in moved.items():
            text = text.replace(old, new)
        return text

    install = _sh_blocks("1. Install")[0]
    script = "\n".join(line for line in local(install).splitlines()
                       if not line.startswith("apt-get "))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": f"{prefix}/usr/local/bin:/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(str(p.relative_to(source)) for p in source.rglob("*")) == before
    release = prefix / "srv" / "fnd" / "releases" / "2026-12-01-1"
    assert (prefix / "srv" / "fnd" / "project").readlink() == release
    assert (release / ".env").stat().st_mode & 0o777 == 0o600
    unit = (ROOT / "systemd" / "fnd.service").read_text()
    command = local(re.search(r"^ExecStart=(.+)$", unit, re.M).group(1)).split()
    (prefix / "run" / "fnd").mkdir(parents=True)  # RuntimeDirectory=fnd
    daemon = subprocess.Popen(command + ["--log-format", "json"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={"PATH": "/usr/bin:/bin",
                                   "RUNTIME_DIRECTORY": f"{prefix}/run/fnd"})
    assert daemon.stderr is not None
    log = LogTail(daemon.stderr)
    try:
        ready = log.wait_for(lambda line: line.get("event") in ("ready", "cannot start"), 90)
        assert ready is not None and ready["event"] == "ready", log.lines[-20:]
        with running_nginx(f"{prefix}/run/fnd/http.sock", prefix / "nginx") as base:
            url = base + "/secure"
            params = {"Body": "hi", "From": "+15550001111"}
            signature = RequestValidator(AUTH_TOKEN).compute_signature(url, params)
            signed = requests.post(url, data=params, timeout=30,
                                   headers={"X-Twilio-Signature": signature})
            assert signed.status_code == 200 and signed.text == "signed hi"
            assert requests.post(url, data=params, timeout=30).status_code == 401
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
        log.close()
        shutil.rmtree(prefix, ignore_errors=True)
