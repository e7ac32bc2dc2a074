"""`env_file`: the project's variables from a file outside the project (a Kubernetes Secret
mounted as a folder), which the functions see in their context and cannot read themselves."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.fndserver import running

SHOW = """def handler(context, event, callback):
    callback(None, {"token": getattr(context, "AUTH_TOKEN", None),
                    "word": getattr(context, "SECRET_WORD", None)})
"""
# Hostile: read the secrets file itself (its path is no secret: the pod spec names it).
PEEK = """def handler(context, event, callback):
    try:
        with open(event["path"]) as secret:
            callback(None, {"read": secret.read()})
    except OSError as exc:
        callback(None, {"errno": exc.errno})
"""


def test_variables_come_from_the_env_file_and_no_worker_reads_it() -> None:
    folder = Path(tempfile.mkdtemp(prefix="fnd-test-secrets-"))
    try:
        # World-readable on purpose: the sandbox, not the file's mode, keeps workers out.
        folder.chmod(0o755)
        secret = folder / ".env"
        secret.write_text("AUTH_TOKEN=from-the-secret\nSECRET_WORD=from-the-secret\n")
        secret.chmod(0o644)
        files = {"functions/show.py": SHOW, "functions/peek.py": PEEK,
                 ".env": "SECRET_WORD=from-the-project\n"}
        with running("ops", env={"FND_ENV_FILE": str(secret)}, files=files) as fnd:
            assert fnd.get("/show").json() == {"token": "from-the-secret",
                                               "word": "from-the-secret"}
            peek = fnd.get("/peek", params={"path": str(secret)}).json()
            assert "read" not in peek and peek["errno"] in (1, 13), peek  # EPERM, EACCES
            check = fnd.wait_for(lambda line: line.get("event") == "sandbox self-check")
            assert check["passed"] and check["checks"][f"read {secret}"] == "EACCES", check
    finally:
        shutil.rmtree(folder, ignore_errors=True)
