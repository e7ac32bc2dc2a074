"""Test your functions with production semantics: a pytest helper around the real `fnd serve`.

``fnd_client(project_dir)`` starts `fnd serve` for the project on a free loopback port —
the same routing, event building, sandboxed workers, time limits, response rules and logs
as in production — and returns an :class:`FndClient`; the daemon stops when the ``with``
block ends. Use it from a fixture, once per module or session (start-up takes about a
second)::

    from collections.abc import Iterator
    from pathlib import Path

    import pytest
    from fnd.testing import FndClient, fnd_client

    PROJECT = Path(__file__).resolve().parent.parent

    @pytest.fixture(scope="module")
    def fnd() -> Iterator[FndClient]:
        with fnd_client(PROJECT) as client:
            yield client

    def test_reply(fnd: FndClient) -> None:
        reply = fnd.post("/sms/reply", data={"From": "+15551234567", "Body": "hi"})
        assert reply.status == 200 and "<Message>" in reply.text

    def test_protected_webhook(fnd: FndClient) -> None:
        # signed with the project's AUTH_TOKEN, exactly as Twilio signs webhooks
        assert fnd.post("/hook", data={"Body": "hi"}, sign=True).status == 200

A reply has ``status``, ``headers`` (case-insensitive; ``headers.getall(name)`` for repeated
ones), ``body`` (bytes), ``text``, ``json()``, ``cookies`` (the Set-Cookie values) and
``invocation_id``; ``fnd.output(reply)`` is what the function printed or logged, and
``fnd.log_line(reply)`` the daemon's log line for the invocation (status, outcome, reason).

Extra ``fnd serve`` flags go after the project (``fnd_client(PROJECT, "--timeout", "2")``);
``env`` adds ``FND_*`` settings for the daemon (not context variables: those come from the
project's ``.env`` and ``fnd.toml`` as in production). Running as root, the project must be
readable by other users (the sandboxed workers' uids); `fnd serve` says so if it is not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fnd.author import client
from fnd.author.client import Pairs, Reply
from fnd.author.launcher import LaunchError, Line, ServeProcess
from fnd.daemon.config import load_config

__all__ = ["FndClient", "LaunchError", "Reply", "fnd_client"]


class FndClient:
    """Requests to the daemon under test; every method returns a :class:`Reply`."""

    def __init__(self, daemon: ServeProcess, project: Path, env: Mapping[str, str]) -> None:
        self._daemon = daemon
        self.project = project
        self._env = env
        self.url = daemon.listen  # e.g. http://127.0.0.1:40123

    def get(self, path: str, *, params: Pairs | None = None,
            headers: Mapping[str, str] | None = None, sign: bool = False) -> Reply:
        return self.request("GET", path, params=params, headers=headers, sign=sign)

    def post(self, path: str, *, data: Pairs | None = None, json: Any = None,
             params: Pairs | None = None, headers: Mapping[str, str] | None = None,
             sign: bool = False) -> Reply:
        """POST a form (``data``, as Twilio webhooks are) or a JSON body (``json``)."""
        return self.request("POST", path, data=data, json=json, params=params,
                            headers=headers, sign=sign)

    def request(self, method: str, path: str, *, params: Pairs | None = None,
                data: Pairs | None = None, json: Any = None,
                headers: Mapping[str, str] | None = None, sign: bool = False,
                timeout: float = 60.0) -> Reply:
        """Any method. ``sign=True`` adds the X-Twilio-Signature Twilio would send."""
        request = client.build(method, path, params=params, data=data, json=json,
                               headers=headers)
        if sign:
            self._sign(request)
        return client.send(self.url, request, timeout=timeout)

    def output(self, reply: Reply) -> list[str]:
        """What the function printed or logged while answering ``reply``."""
        self.log_line(reply)  # output lines are logged before the invocation line
        return [str(line.get("line")) for line in self._daemon.output_of(reply.invocation_id)]

    def log_line(self, reply: Reply, timeout: float = 10.0) -> Line:
        """The daemon's invocation log line for ``reply`` (status, outcome, reason, ...)."""
        line = self._daemon.invocation(reply.invocation_id, timeout)
        if line is None:
            raise LookupError(f"no log line for invocation {reply.invocation_id!r}")
        return line

    @property
    def log_lines(self) -> list[Line]:
        """Every log line of the daemon so far (JSON objects)."""
        return list(self._daemon.lines)

    def _sign(self, request: client.Request) -> None:
        # Read at each call: a test may have changed .env between requests.
        config = load_config(self.project, environ={**os.environ, **self._env})
        token = config.context_defaults().get("AUTH_TOKEN")
        if not token:
            raise ValueError(f"sign=True needs AUTH_TOKEN in {self.project}/.env "
                             "(or [env] in fnd.toml)")
        base = config.public_url or "http://" + client.host_header(self.url)
        client.sign(request, token, base)


@contextmanager
def fnd_client(project_dir: str | Path, *serve_args: str, env: Mapping[str, str] | None = None,
               ready_timeout: float = 60.0) -> Iterator[FndClient]:
    """Run `fnd serve` on ``project_dir`` (free port on 127.0.0.1) for the ``with`` block.

    Raises :class:`LaunchError` with fnd's reason when the daemon cannot start.
    """
    project = Path(project_dir).resolve()
    args = ["--host", "127.0.0.1", "--port", "0", "--workers-min", "1", *serve_args]
    with ServeProcess(project, args, dict(env or {}), ready_timeout) as daemon:
        yield FndClient(daemon, project, dict(env or {}))
