"""Run the real nginx (Debian package) with the shipped site config, templated into a temp dir."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SITE = Path(__file__).resolve().parent.parent / "systemd" / "nginx-fnd.conf"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The shipped site's instances (one `server` and upstream each) and their server names.
INSTANCES = {"shop": "shop.example.com", "support": "support.example.com"}


def site_config(fnd_sockets: list[str] | dict[str, str], port: int) -> str:
    """The shipped site with only its deployment-specific parts replaced.

    A list of sockets: every upstream gets them all (fnd instances side by side; the first
    server, nginx's default, answers requests for any other name). A dict, instance name →
    socket: each of the site's servers proxies to its own instance's socket.
    """
    text = SITE.read_text()
    for needle in ("listen 80;", "listen [::]:80;"):
        assert needle in text, f"{SITE} no longer contains {needle!r}"
    for name in INSTANCES:
        upstream = f"server unix:/run/fnd/{name}/http.sock;"
        assert upstream in text, f"{SITE} no longer contains {upstream!r}"
        sockets = fnd_sockets if isinstance(fnd_sockets, list) else [fnd_sockets[name]]
        text = text.replace(upstream, "\n    ".join(f"server unix:{path};" for path in sockets))
    text = text.replace("listen 80;", f"listen 127.0.0.1:{port};")
    return text.replace("listen [::]:80;", "")


@contextmanager
def running_nginx(fnd_sockets: str | list[str] | dict[str, str], workdir: Path) -> Iterator[str]:
    """nginx in front of fnd's unix socket(s) (see site_config); yields its base URL.
    Stopped afterwards."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = _free_port()
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    sockets = [fnd_sockets] if isinstance(fnd_sockets, str) else fnd_sockets
    (workdir / "site.conf").write_text(site_config(sockets, port))
    (workdir / "nginx.conf").write_text(f"""
user root root;  # tests only: lets the worker reach fnd's 0660 root-owned socket
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
    include {workdir}/site.conf;
}}
""")
    check = subprocess.run([nginx, "-t", "-c", str(workdir / "nginx.conf")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([nginx, "-c", str(workdir / "nginx.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.02)  # polling a port, not synchronising on time
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
