"""Operating fnd for real: nginx in front, sd_notify, socket activation, status and metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from twilio.request_validator import RequestValidator

from tests.fndserver import FndServer, running, until
from tests.nginx import running_nginx

AUTH_TOKEN = "12345678901234567890123456789012"  # the ops fixture's .env
ROOT = Path(__file__).resolve().parents[2]


def _fnd_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "fnd.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)




# -- nginx ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def behind_nginx() -> Iterator[tuple[FndServer, str]]:
    with running("ops", "--unix", "{dir}/http.sock") as fnd:
        workdir = Path(tempfile.mkdtemp(prefix="fnd-nginx-", dir="/tmp"))
        try:
            with running_nginx(str(fnd.project.parent / "http.sock"), workdir) as base:
                yield fnd, base
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def test_requests_through_nginx_reach_functions(behind_nginx: tuple[FndServer, str]) -> None:
    fnd, base = behind_nginx
    response = requests.get(base + "/hello", timeout=30)
    assert response.status_code == 200 and response.text == "hello"
    assert response.headers["X-Fnd-Invocation-Id"]
    assert fnd.url.startswith("unix:")


def test_nginx_request_id_becomes_the_invocation_id(behind_nginx: tuple[FndServer, str]) -> None:
    fnd, base = behind_nginx
    response = requests.get(base + "/hello", timeout=30)
    invocation_id = response.headers["X-Fnd-Invocation-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", invocation_id)  # nginx's $request_id
    line = fnd.invocation(invocation_id)
    assert line["path"] == "/hello"
    # nginx reaches fnd over a unix socket: the address comes from its X-Forwarded-For.
    assert line["client"] == "127.0.0.1"


def test_nginx_passes_traceparent_and_tracestate_through(
    behind_nginx: tuple[FndServer, str]
) -> None:
    fnd, base = behind_nginx
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = requests.get(base + "/hello", timeout=30, headers={
        "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "tracestate": "congo=t61rcWkgMzE"})
    line = fnd.invocation(response.headers["X-Fnd-Invocation-Id"])
    assert line["trace_id"] == trace_id and line["parent_span_id"] == "00f067aa0ba902b7"


def test_request_id_and_forwarded_for_from_an_untrusted_peer_are_ignored() -> None:
    with running("ops") as fnd:  # TCP client on loopback: not a trusted proxy by default
        response = fnd.get("/hello", headers={"X-Request-Id": "chosen-by-client",
                                              "X-Forwarded-For": "203.0.113.9"})
        invocation_id = response.headers["X-Fnd-Invocation-Id"]
        assert invocation_id != "chosen-by-client"
        assert fnd.invocation(invocation_id)["client"] == "127.0.0.1"  # not the spoofed one


def test_domain_name_comes_from_the_forwarded_host(behind_nginx: tuple[FndServer, str]) -> None:
    _, base = behind_nginx
    body = requests.get(base + "/domain", headers={"Host": "functions.example.com"},
                        timeout=30).json()
    assert body["domain"] == "functions.example.com"
    assert not [h for h in body["request_headers"] if h.startswith("x-forwarded-")]


def test_protected_function_signed_for_the_public_url(behind_nginx: tuple[FndServer, str]) -> None:
    _, base = behind_nginx
    url = base + "/secure"
    params = {"Body": "hi", "From": "+15550001111"}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, params)
    signed = requests.post(url, data=params, headers={"X-Twilio-Signature": signature},
                           timeout=30)
    assert signed.status_code == 200 and signed.text == "signed hi"
    unsigned = requests.post(url, data=params, timeout=30)
    assert unsigned.status_code == 401


def test_slow_function_gets_fnds_own_504_not_nginxs(behind_nginx: tuple[FndServer, str]) -> None:
    _, base = behind_nginx
    response = requests.get(base + "/slow", params={"s": "6"}, timeout=30)
    assert response.status_code == 504
    assert "X-Fnd-Invocation-Id" in response.headers  # fnd answered, not nginx
    assert "timed out after 5 s" in response.text


# -- systemd ----------------------------------------------------------------------------


def _datagrams(sock: socket.socket, wanted: Callable[[list[str]], bool],
               timeout: float = 30.0) -> list[str]:
    """Collect sd_notify fields until `wanted(fields so far)` holds."""
    fields: list[str] = []
    deadline = time.monotonic() + timeout
    while not wanted(fields):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"notify messages so far: {fields}"
        sock.settimeout(remaining)
        fields.extend(sock.recv(4096).decode().splitlines())
    return fields


def test_sd_notify_ready_status_watchdog_and_reload() -> None:
    folder = tempfile.mkdtemp(prefix="fnd-notify-", dir="/tmp")
    path = os.path.join(folder, "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    try:
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
        with running("ops", "--workers-min", "2", env=env) as fnd:
            fields = _datagrams(listener, lambda f: "READY=1" in f)
            status = fnd.status()
            assert status["workers"]["idle"] + status["workers"]["busy"] >= 2
            assert status["workers"]["starting"] == 0
            fields = _datagrams(listener, lambda f: any(x.startswith("STATUS=") for x in f)
                                and f.count("WATCHDOG=1") >= 2)
            line = next(x for x in fields if x.startswith("STATUS="))
            assert re.search(r"\d+ idle, \d+ busy, \d+ starting \(min 2, max \d+\)", line)
            reload = _fnd_cli("reload", "--control", fnd.control)
            assert reload.returncode == 0, reload.stderr
            fields = _datagrams(listener, lambda f: "RELOADING=1" in f and "READY=1" in
                                f[f.index("RELOADING=1"):])
            assert fields.index("RELOADING=1") < len(fields) - 1
    finally:
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_reload_works_with_a_pool_of_one_and_says_a_failure_once() -> None:
    # workers_min = workers_max = 1: the preflight's worker holds the only other slot until it
    # is reaped; the new generation waits for it instead of failing the reload.
    with running("ops", "--workers-min", "1", "--workers-max", "1") as fnd:
        assert fnd.get("/hello").text == "hello"
        hello = fnd.project / "functions" / "hello.py"
        for generation in (1, 2):  # the second reload reuses the slot the first one freed
            hello.write_text(f'def handler(context, event):\n    return "new {generation}"\n')
            reload = _fnd_cli("reload", "--control", fnd.control)
            assert reload.returncode == 0, reload.stderr
            assert f"reloaded (generation {generation})" in reload.stdout
            assert fnd.get("/hello").text == f"new {generation}"
        hello.write_text("def handler(context, event):\n    return (\n")
        failed = _fnd_cli("reload", "--control", fnd.control)
        assert failed.returncode == 1
        assert failed.stderr.count("reload failed") == 1, failed.stderr
        assert "hello.py" in failed.stderr and "SyntaxError" in failed.stderr, failed.stderr
        assert fnd.get("/hello").text == "new 2"


def test_socket_activation_serves_the_passed_socket() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    # A tiny launcher does what systemd does: the socket as fd 3, LISTEN_PID = the server's pid.
    launcher = (f"import os, sys; os.dup2({fd}, 3); os.close({fd}); "
                "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
                "os.execv(sys.argv[1], sys.argv[1:])")

    def wrap(command: list[str]) -> list[str]:
        return [sys.executable, "-c", launcher, *command]

    try:
        with running("ops", wrap=wrap, pass_fds=(fd,)) as fnd:
            assert fnd.url == f"systemd:http://127.0.0.1:{port}"
            response = requests.get(f"http://127.0.0.1:{port}/hello", timeout=30)
            assert response.text == "hello"
    finally:
        listener.close()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # The unit names /opt/fnd-venv, which verify checks exists: point it at the fnd under
    # test, wherever FND_VENV put it.
    fnd = str(Path(sys.executable).parent / "fnd")
    for name in ("fnd.service", "fnd.socket", "fnd@.service", "fnd@.socket"):
        text = (ROOT / "systemd" / name).read_text().replace("/opt/fnd-venv/bin/fnd", fnd)
        (tmp_path / name).write_text(text)
    # The templates are checked as an instance: verify loads fnd@.service for fnd@shop.service.
    units = ["fnd.service", "fnd.socket", "fnd@shop.service", "fnd@shop.socket"]
    result = subprocess.run(
        ["systemd-analyze", "verify", *[str(tmp_path / unit) for unit in units]],
        capture_output=True, text=True, timeout=60,
    )
    # verify only warns on unknown keys and still exits 0: no output at all is the bar.
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and output == "", output


# -- fnd status / fnd metrics ------------------------------------------------------------


def test_status_table_and_json_with_busy_and_idle_workers() -> None:
    with running("ops", "--workers-min", "2", "--workers-max", "2") as fnd:
        slow = threading.Thread(target=lambda: fnd.get("/slow", params={"s": "2"}))
        slow.start()
        until(lambda: fnd.status()["workers"]["busy"] == 1)
        table = _fnd_cli("status", "--control", fnd.control)
        assert table.returncode == 0, table.stdout + table.stderr
        assert "1 idle, 1 busy" in table.stdout and "/slow" in table.stdout
        as_json = _fnd_cli("status", "--control", fnd.control, "--json")
        assert as_json.returncode == 0
        status = json.loads(as_json.stdout)
        busy = [w for w in status["per_worker"] if w["state"] == "busy"]
        idle = [w for w in status["per_worker"] if w["state"] == "idle"]
        assert len(busy) == 1 and len(idle) == 1
        assert busy[0]["function"] == "/slow" and busy[0]["invocation"]
        assert busy[0]["rss"] > 0
        for key in ("version", "uptime", "pid", "listen", "sandbox", "queue", "totals"):
            assert key in status, key
        slow.join(30)


def test_status_exit_codes_unreachable_and_degraded() -> None:
    missing = _fnd_cli("status", "--control", "/tmp/fnd-no-such-daemon.sock")
    assert missing.returncode == 4
    with running("ops", env={"FND_SANDBOX": "permissive"}) as fnd:
        degraded = _fnd_cli("status", "--control", fnd.control)
        assert degraded.returncode == 3, degraded.stdout


@pytest.mark.root_only  # /run/fnd is root's
def test_status_and_reload_find_an_instance_by_name() -> None:
    # fnd@NAME.service keeps its control socket at /run/fnd/NAME/control.sock.
    name = f"ops-test-{os.getpid()}"
    control = f"/run/fnd/{name}/control.sock"
    try:
        with running("ops", "--control", control) as fnd:
            fnd.control = control
            status = _fnd_cli("status", name, "--json")
            assert status.returncode == 0, status.stdout + status.stderr
            assert json.loads(status.stdout)["pid"] == fnd.status()["pid"]
            table = _fnd_cli("status", name)
            assert re.search(r"^uids +\d+-\d+", table.stdout, re.M), table.stdout
            reload = _fnd_cli("reload", name)
            assert reload.returncode == 0 and "reloaded (generation 1)" in reload.stdout
            assert _fnd_cli("metrics", name).stdout.startswith("# HELP")
            # The path form still works, and naming both is a usage error.
            assert _fnd_cli("status", "--control", control).returncode == 0
            assert _fnd_cli("status", name, "--control", control).returncode == 2
            default = _fnd_cli("status")
            if default.returncode == 4:  # nothing at the default path: the instances are named
                assert name in default.stderr, default.stderr
        missing = _fnd_cli("reload", name)
        assert missing.returncode == 4
        assert f"/run/fnd/{name}/control.sock not reachable" in missing.stderr
    finally:
        shutil.rmtree(f"/run/fnd/{name}", ignore_errors=True)


def _parse_metrics(text: str) -> dict[str, float]:
    """Samples by series, 'name{label="value",...}' with the labels sorted by name."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = float(sample.value)
    return samples


def test_metrics_parse_and_move_with_requests() -> None:
    with running("ops") as fnd:
        key = 'fnd_invocations_total{function="/hello",outcome="ok"}'
        text = _fnd_cli("metrics", "--control", fnd.control).stdout
        before = _parse_metrics(text)
        # Series exist from start at 0; the start-up self-check is not counted anywhere.
        assert before[key] == 0
        assert before['fnd_invocations_total{function="/hello",outcome="error"}'] == 0
        assert before['fnd_worker_restarts_total{reason="timeout"}'] == 0
        assert before['fnd_worker_restarts_total{reason="oom"}'] == 0
        assert before['fnd_invocation_duration_seconds_count{function="/hello"}'] == 0
        assert "self-check" not in text
        assert fnd.status()["totals"]["invocations"] == 0
        for _ in range(3):
            assert fnd.get("/hello").status_code == 200
        until(lambda: _parse_metrics(_fnd_cli("metrics", "--control", fnd.control).stdout)
               .get(key, 0) >= before.get(key, 0) + 3)
        after = _parse_metrics(_fnd_cli("metrics", "--control", fnd.control).stdout)
        assert after['fnd_invocation_duration_seconds_count{function="/hello"}'] >= 3
        assert after['fnd_workers{state="idle"}'] + after['fnd_workers{state="busy"}'] >= 1
        assert 'fnd_build_info{version="0.1.0"}' in after


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    return _parse_metrics(response.text)


def test_metrics_endpoint_duration_by_function_and_process_figures() -> None:
    port = _free_loopback_port()
    hello = "def handler(context, event, callback):\n    callback(None, 'x')\n"
    with running("ops", "--metrics-port", str(port), files={"functions/x.py": hello}) as fnd:
        started = time.time()
        before = _scrape(port)
        # Every route has its series from start; no series for paths that are no function.
        assert before['fnd_invocation_duration_seconds_count{function="/x"}'] == 0
        assert fnd.get("/x").text == "x"
        assert fnd.get("/no-such-function").status_code == 404
        key = 'fnd_invocation_duration_seconds_count{function="/x"}'
        until(lambda: _scrape(port).get(key, 0) == 1, what="/x timed")
        after = _scrape(port)
        assert after['fnd_invocation_duration_seconds_bucket{function="/x",le="+Inf"}'] == 1
        assert after['fnd_invocation_duration_seconds_sum{function="/x"}'] > 0
        assert after['fnd_invocation_duration_seconds_count{function="/hello"}'] == 0
        functions = set(re.findall(r'^fnd_invocation_duration_seconds_count\{function="(.*)"\}$',
                                   "\n".join(after), re.M))
        assert functions == {"/domain", "/hello", "/secure", "/slow", "/x"}
        # The daemon's own process figures, as every exporter has them.
        assert 0 < after["process_start_time_seconds"] <= started
        assert after["process_resident_memory_bytes"] > 1 << 20
        assert after["process_virtual_memory_bytes"] >= after["process_resident_memory_bytes"]
        assert after["process_open_fds"] > 0
        assert after["process_max_fds"] >= after["process_open_fds"]
        assert after["process_cpu_seconds_total"] > 0
        print(f"daemon: rss {after['process_resident_memory_bytes'] / 2**20:.1f} MiB, "
              f"{after['process_open_fds']:.0f} fds, cpu {after['process_cpu_seconds_total']} s")

        # A reload that removes /x and adds /y: /y at 0 at once, /x's series gone.
        os.remove(fnd.project / "functions" / "x.py")
        (fnd.project / "functions" / "y.py").write_text(hello)
        reload = _fnd_cli("reload", "--control", fnd.control)
        assert reload.returncode == 0, reload.stderr
        reloaded = _scrape(port)
        assert reloaded['fnd_invocation_duration_seconds_count{function="/y"}'] == 0
        assert 'fnd_invocation_duration_seconds_count{function="/x"}' not in reloaded
        assert reloaded['fnd_invocation_duration_seconds_count{function="/hello"}'] == 0
