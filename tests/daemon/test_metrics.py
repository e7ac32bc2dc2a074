"""Prometheus text from Stats + status, read by prometheus-client's own parser, plus the
format rules that parser lets pass (typed families, no duplicate series, cumulative buckets).

The format: docs/operating.md#5-metrics.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import resource
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector

from fnd.daemon import calls
from fnd.daemon.ops.admin import start_admin_server
from fnd.daemon.ops.metrics import CONTENT_TYPE, render_metrics
from fnd.daemon.stats import BUCKETS, Histogram, Stats

pytestmark = pytest.mark.unit

# -- the parser and the rules on top --------------------------------------------------------

Series = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Family:
    kind: str
    help: str = ""
    samples: dict[Series, float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]


def parse(text: str) -> dict[str, Family]:
    """Families by the name in their TYPE line (a counter's ends in _total; prometheus-client
    drops that suffix from its family name). Beyond what the parser checks: a final newline,
    every family typed and typed once, no duplicate series, histograms cumulative and ending
    with +Inf == _count."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    families: dict[str, Family] = {}
    for metric in text_string_to_metric_families(text):
        assert metric.type != "unknown", f"samples of {metric.name} without a # TYPE line"
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        assert name not in families, f"{name} twice"
        types = re.findall(rf"^# TYPE {re.escape(name)} ", text, re.M)
        assert len(types) == 1, f"{len(types)} TYPE lines for {name}"
        family = families[name] = Family(metric.type, metric.documentation)
        for sample in metric.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in family.samples, f"duplicate series {key}"
            family.samples[key] = float(sample.value)
        if family.kind == "histogram":
            _check_histogram(name, family)
    return families


def _check_histogram(name: str, family: Family) -> None:
    """Each series of the histogram (its labels but le) on its own."""
    buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    others: dict[str, set[tuple[tuple[str, str], ...]]] = {"_sum": set(), "_count": set()}
    for (sample, labels), value in family.samples.items():
        if sample == name + "_bucket":
            rest = tuple((k, v) for k, v in labels if k != "le")
            le = float(dict(labels)["le"].replace("Inf", "inf"))
            buckets.setdefault(rest, []).append((le, value))
        else:
            others[sample.removeprefix(name)].add(labels)
    assert others["_sum"] == others["_count"] == set(buckets), f"{name}: series incomplete"
    for rest, pairs in buckets.items():
        pairs.sort()
        assert pairs[-1][0] == math.inf, f"{name}{dict(rest)}: no +Inf bucket"
        counts = [count for _, count in pairs]
        assert counts == sorted(counts), f"{name}{dict(rest)}: buckets are not cumulative"
        assert pairs[-1][1] == family.samples[(name + "_count", rest)]


# -- fixtures -------------------------------------------------------------------------------

def status(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": "0.1.0",
        "pid": 4242,
        "uptime": 12.5,
        "listen": "unix:/run/fnd/http.sock",
        "sandbox": "strict",
        "workers": {"idle": 2, "busy": 1, "starting": 0, "min": 2, "max": 8},
        "queue": 3,
        "per_worker": [],
    }
    return base | overrides


def record(stats: Stats, function: str | None, outcome: str, duration: float = 0.01,
           queue_wait: float = 0.0, status_code: int = 200) -> None:
    stats.record(invocation_id="inv", method="GET", path=function or "/nope",
                 status=status_code, outcome=outcome, duration=duration,
                 queue_wait=queue_wait, function=function)


@pytest.fixture
def stats() -> Stats:
    return Stats(log=_Quiet())


class _Quiet:
    """Stands in for the structlog logger: these tests are about counters."""

    def bind(self, **_context: Any) -> _Quiet:
        return self

    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


# -- tests ----------------------------------------------------------------------------------

def test_empty_daemon_renders_valid_text(stats: Stats) -> None:
    families = parse(render_metrics(stats, status()))
    assert families["fnd_build_info"].value("fnd_build_info", version="0.1.0") == 1
    assert families["fnd_uptime_seconds"].value("fnd_uptime_seconds") == 12.5
    assert families["fnd_invocations_total"].kind == "counter"
    assert families["fnd_invocations_total"].samples == {}
    workers = families["fnd_workers"]
    assert workers.kind == "gauge"
    assert [workers.value("fnd_workers", state=s) for s in ("idle", "busy", "starting")] == [
        2, 1, 0]
    assert families["fnd_workers_min"].value("fnd_workers_min") == 2
    assert families["fnd_queue_length"].value("fnd_queue_length") == 3
    assert "fnd_queue_longest_wait_seconds" not in families
    assert families["fnd_queue_wait_seconds"].value("fnd_queue_wait_seconds_count") == 0
    assert families["fnd_queue_wait_seconds"].value(
        "fnd_queue_wait_seconds_bucket", le="+Inf") == 0
    # No function loaded, no duration series; the family is still typed and documented.
    assert families["fnd_invocation_duration_seconds"].kind == "histogram"
    assert families["fnd_invocation_duration_seconds"].samples == {}
    assert all(family.help for family in families.values())


def test_counters_and_histograms_move_with_record(stats: Stats) -> None:
    record(stats, "/hello", calls.OK, duration=0.003, queue_wait=0.0005)
    record(stats, "/hello", calls.OK, duration=0.2, queue_wait=0.02)
    record(stats, "/hello", calls.TIMEOUT, duration=5.01, status_code=504)
    record(stats, "/crashy", calls.CRASH, duration=0.05, status_code=502)
    record(stats, "/hello", calls.OVERLOAD, duration=10.5, queue_wait=10.5, status_code=503)
    record(stats, None, calls.REJECTED, duration=0.0001, status_code=404)  # unknown path
    record(stats, "/hello", calls.REJECTED, duration=0.0001, status_code=405)

    families = parse(render_metrics(stats, status()))
    inv = families["fnd_invocations_total"]
    assert inv.value("fnd_invocations_total", function="/hello", outcome="ok") == 2
    assert inv.value("fnd_invocations_total", function="/hello", outcome="timeout") == 1
    assert inv.value("fnd_invocations_total", function="/hello", outcome="overload") == 1
    assert inv.value("fnd_invocations_total", function="/hello", outcome="rejected") == 1
    assert inv.value("fnd_invocations_total", function="/crashy", outcome="crash") == 1
    assert inv.value("fnd_invocations_total", function="-", outcome="rejected") == 1
    assert sum(inv.samples.values()) == stats.invocations == 7

    # Only requests that went to the pool are timed: rejected ones would drown the latency.
    duration = families["fnd_invocation_duration_seconds"]
    name = "fnd_invocation_duration_seconds"
    assert duration.value(name + "_count", function="/hello") == 4
    assert duration.value(name + "_sum", function="/hello") == pytest.approx(
        0.003 + 0.2 + 5.01 + 10.5)
    assert duration.value(name + "_bucket", function="/hello", le="0.005") == 1
    assert duration.value(name + "_bucket", function="/hello", le="0.25") == 2
    assert duration.value(name + "_bucket", function="/hello", le="10.0") == 3
    assert duration.value(name + "_bucket", function="/hello", le="+Inf") == 4
    assert duration.value(name + "_count", function="/crashy") == 1
    assert duration.value(name + "_bucket", function="/crashy", le="0.05") == 1
    assert duration.value(name + "_bucket", function="/crashy", le="0.025") == 0
    # A 404 (no function) is not timed and gets no series of its own.
    assert {dict(labels)["function"] for _, labels in duration.samples} == {"/hello", "/crashy"}

    wait = families["fnd_queue_wait_seconds"]
    assert wait.value("fnd_queue_wait_seconds_count") == 5
    assert wait.value("fnd_queue_wait_seconds_bucket", le="0.001") == 3  # 0.0005, 0, 0
    assert wait.value("fnd_queue_wait_seconds_bucket", le="0.025") == 4

    # And they keep moving.
    record(stats, "/hello", calls.OK)
    again = parse(render_metrics(stats, status()))
    assert again["fnd_invocations_total"].value(
        "fnd_invocations_total", function="/hello", outcome="ok") == 3
    assert again["fnd_invocation_duration_seconds"].value(
        "fnd_invocation_duration_seconds_count", function="/hello") == 5


def test_worker_restarts_by_reason(stats: Stats) -> None:
    for reason in ("timeout", "timeout", "oom", "max_requests"):
        stats.worker_restart(reason)
    family = parse(render_metrics(stats, status()))["fnd_worker_restarts_total"]
    assert family.kind == "counter"
    assert family.value("fnd_worker_restarts_total", reason="timeout") == 2
    assert family.value("fnd_worker_restarts_total", reason="oom") == 1
    assert family.value("fnd_worker_restarts_total", reason="max_requests") == 1


def test_counters_have_series_at_zero_from_start(stats: Stats) -> None:
    families = parse(render_metrics(stats, status(), ["/hello"]))
    restarts = families["fnd_worker_restarts_total"]
    for reason in ("timeout", "oom", "exit", "signal", "unclean", "max_requests", "zygote"):
        assert restarts.value("fnd_worker_restarts_total", reason=reason) == 0
    # Causes that are never counted as restarts get no series.
    assert ("fnd_worker_restarts_total", (("reason", "stopping"),)) not in restarts.samples
    invocations = families["fnd_invocations_total"]
    for outcome in ("ok", "error", "timeout", "crash", "overload", "rejected"):
        assert invocations.value("fnd_invocations_total", function="/hello", outcome=outcome) == 0
    duration = families["fnd_invocation_duration_seconds"]
    assert duration.value("fnd_invocation_duration_seconds_count", function="/hello") == 0
    assert duration.value(
        "fnd_invocation_duration_seconds_bucket", function="/hello", le="+Inf") == 0
    stats.worker_restart("timeout")
    record(stats, "/hello", calls.ERROR)
    again = parse(render_metrics(stats, status(), ["/hello"]))
    assert again["fnd_worker_restarts_total"].value(
        "fnd_worker_restarts_total", reason="timeout") == 1
    assert again["fnd_invocations_total"].value(
        "fnd_invocations_total", function="/hello", outcome="error") == 1


def test_internal_invocations_are_not_counted(stats: Stats) -> None:
    record(stats, "/.fnd/self-check", calls.OK)
    assert stats.invocations == 0 and stats.totals()["ok"] == 0
    assert not stats.durations and not stats.by_function
    assert "self-check" not in render_metrics(stats, status())


def test_label_values_are_escaped(stats: Stats) -> None:
    odd = '/we"ird\\path\nx'
    record(stats, odd, calls.ERROR, status_code=500)
    text = render_metrics(stats, status(version='1.0"\\'))
    families = parse(text)
    assert families["fnd_invocations_total"].value(
        "fnd_invocations_total", function=odd, outcome="error") == 1
    assert families["fnd_build_info"].value("fnd_build_info", version='1.0"\\') == 1


def test_longest_queue_wait_when_the_status_has_it(stats: Stats) -> None:
    families = parse(render_metrics(stats, status(queue_longest_wait=1.25)))
    assert families["fnd_queue_longest_wait_seconds"].value(
        "fnd_queue_longest_wait_seconds") == 1.25


def test_histogram_bounds_are_inclusive() -> None:
    hist = Histogram()
    for value in (BUCKETS[0], BUCKETS[-1], BUCKETS[-1] * 2):
        hist.observe(value)
    cumulative = dict(hist.cumulative())
    assert cumulative[BUCKETS[0]] == 1
    assert cumulative[BUCKETS[-1]] == 2
    assert cumulative[math.inf] == 3


def test_uptime_falls_back_to_stats(stats: Stats) -> None:
    families = parse(render_metrics(stats, {"version": "0.1.0"}))
    assert 0 <= families["fnd_uptime_seconds"].value("fnd_uptime_seconds") < 60


# -- the HTTP endpoint -------------------------------------------------------------

async def _get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


def test_metrics_server_serves_on_loopback(stats: Stats) -> None:
    record(stats, "/hello", calls.OK)

    async def scenario() -> tuple[tuple[int, str, str], tuple[int, str, str], str]:
        runner = await start_admin_server(
            "127.0.0.1", 0, lambda: render_metrics(stats, status()), lambda: None, "fnd")
        try:
            host, port = runner.addresses[0][:2]
            metrics = await _get(f"http://127.0.0.1:{port}/metrics")
            other = await _get(f"http://127.0.0.1:{port}/other")
            return metrics, other, host
        finally:
            await runner.cleanup()

    (code, content_type, body), (other_code, _, _), host = asyncio.run(scenario())
    assert host == "127.0.0.1"
    assert code == 200
    assert content_type == CONTENT_TYPE
    assert other_code == 404
    assert parse(body)["fnd_invocations_total"].value(
        "fnd_invocations_total", function="/hello", outcome="ok") == 1


def test_metrics_server_on_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def scenario() -> str:
        runner = await start_admin_server("::1", 0, lambda: "x 1\n", lambda: None, "fnd")
        try:
            port = runner.addresses[0][1]
            return (await _get(f"http://[::1]:{port}/metrics"))[2]
        finally:
            await runner.cleanup()

    try:
        body = asyncio.run(scenario())
    except OSError as exc:
        pytest.skip(f"::1 not usable here: {exc}")
    assert body == "x 1\n"


def test_many_functions_stay_one_series_each(stats: Stats) -> None:
    for i in range(50):
        record(stats, f"/f{i}", calls.OK)
        record(stats, f"/f{i}", calls.OK)
    families = parse(render_metrics(stats, status()))
    assert len(families["fnd_invocations_total"].samples) == 50


@pytest.mark.parametrize("bad", [
    "x 1\n",  # no TYPE
    "# TYPE x gauge\nx{a=\"b} 1\n",  # unterminated label value
    "# TYPE x gauge\nx 1\nx 2\n",  # duplicate series
    "# TYPE x gauge\nx one\n",  # not a number
    "# TYPE x_total counter\n# TYPE x_total counter\n",  # second TYPE
    "# TYPE h histogram\nh_bucket{le=\"1.0\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
    "# TYPE x gauge\nx 1",  # no final newline
])
def test_the_parser_is_strict(bad: str) -> None:
    with pytest.raises((AssertionError, KeyError, ValueError)):
        parse(bad)


# -- the function label on the duration histogram -------------------------------------------

def _duration_functions(stats: Stats, functions: list[str]) -> set[str]:
    family = parse(render_metrics(stats, status(), functions))["fnd_invocation_duration_seconds"]
    return {dict(labels)["function"] for _, labels in family.samples}


def test_duration_series_follow_the_routes_over_reloads(stats: Stats) -> None:
    name = "fnd_invocation_duration_seconds"
    stats.routes_loaded(["/a", "/b"])
    record(stats, "/a", calls.OK, duration=0.002)
    record(stats, "/b", calls.OK, duration=0.3)
    assert _duration_functions(stats, ["/a", "/b"]) == {"/a", "/b"}

    # A reload that keeps /a, removes /b and adds /c: /a keeps counting, /c starts at 0,
    # /b's series go (Prometheus marks them stale), so the label set stays the routes.
    stats.routes_loaded(["/a", "/c"])
    assert _duration_functions(stats, ["/a", "/c"]) == {"/a", "/c"}
    record(stats, "/a", calls.OK, duration=0.004)
    family = parse(render_metrics(stats, status(), ["/a", "/c"]))[name]
    assert family.value(name + "_count", function="/a") == 2
    assert family.value(name + "_bucket", function="/a", le="0.0025") == 1
    assert family.value(name + "_count", function="/c") == 0

    # A call of /b still in flight over the reload is counted; the next reload drops it again.
    record(stats, "/b", calls.OK)
    assert _duration_functions(stats, ["/a", "/c"]) == {"/a", "/b", "/c"}
    stats.routes_loaded(["/a", "/c"])
    assert _duration_functions(stats, ["/a", "/c"]) == {"/a", "/c"}


def test_duration_is_one_observation_per_call_in_its_function(stats: Stats) -> None:
    stats.routes_loaded(["/a", "/b"])
    for _ in range(3):
        record(stats, "/a", calls.OK)
    record(stats, None, calls.REJECTED, status_code=404)
    record(stats, "/a", calls.REJECTED, status_code=405)
    assert stats.durations["/a"].count == 3
    assert stats.durations["/b"].count == 0
    assert set(stats.durations) == {"/a", "/b"}
    assert stats.queue_wait.count == 3


# -- process_* ------------------------------------------------------------------------------

PROCESS_FAMILIES = {
    "process_cpu_seconds_total": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
}


def _fake_proc(root: Any, *, max_files: str = "1024", fds: int = 3) -> str:
    """A /proc with what the collector reads: btime, and self/{stat,limits,fd}."""
    (root / "stat").write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n")
    me = root / "self"
    (me / "fd").mkdir(parents=True)
    for fd in range(fds):
        (me / "fd" / str(fd)).write_text("")
    # The command name may hold spaces and parentheses: fields count after the last ")".
    fields = ["S"] + ["0"] * 50
    fields[11], fields[12] = "250", "150"  # utime, stime in ticks
    fields[19] = "4200"  # starttime, ticks after boot
    fields[20], fields[21] = "123456789", "1000"  # vsize bytes, rss pages
    (me / "stat").write_text("4242 (fnd (x) y) " + " ".join(fields) + "\n")
    (me / "limits").write_text(
        "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max cpu time              unlimited            unlimited            seconds\n"
        f"Max open files            {max_files:<20} 524288               files\n")
    return str(me)


def test_process_families_from_proc(stats: Stats, tmp_path: Any) -> None:
    ticks, page = os.sysconf("SC_CLK_TCK"), resource.getpagesize()
    families = parse(render_metrics(stats, status(), proc=_fake_proc(tmp_path)))
    assert {n: families[n].kind for n in PROCESS_FAMILIES} == PROCESS_FAMILIES

    def value(name: str) -> float:
        return families[name].value(name)

    assert value("process_cpu_seconds_total") == pytest.approx(400 / ticks)
    assert value("process_resident_memory_bytes") == 1000 * page
    assert value("process_virtual_memory_bytes") == 123456789
    assert value("process_start_time_seconds") == pytest.approx(1700000000 + 4200 / ticks)
    assert value("process_open_fds") == 3
    assert value("process_max_fds") == 1024


def test_process_max_fds_unlimited_is_left_out(stats: Stats, tmp_path: Any) -> None:
    families = parse(render_metrics(stats, status(),
                                    proc=_fake_proc(tmp_path, max_files="unlimited")))
    assert "process_max_fds" not in families
    assert families["process_open_fds"].value("process_open_fds") == 3


def test_no_proc_no_process_families(stats: Stats, tmp_path: Any) -> None:
    families = parse(render_metrics(stats, status(), proc=str(tmp_path / "self")))
    assert not set(PROCESS_FAMILIES) & set(families)
    assert "fnd_invocations_total" in families


def test_process_families_agree_with_prometheus_client(stats: Stats) -> None:
    """Same names, types, help and (for what does not move between two reads) values as
    prometheus-client's own ProcessCollector, on this very process."""
    theirs = {m.name: m for m in ProcessCollector(registry=None).collect()}
    ours = parse(render_metrics(stats, status()))
    assert len(theirs) == len(PROCESS_FAMILIES)
    for metric in theirs.values():
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        assert ours[name].kind == metric.type
        assert ours[name].help == metric.documentation
        mine, (sample,) = ours[name].value(name), metric.samples
        if name in ("process_start_time_seconds", "process_max_fds"):
            assert mine == pytest.approx(sample.value)
        elif name == "process_open_fds":
            assert abs(mine - sample.value) <= 2
        else:  # CPU and memory move between the two reads, not by much
            assert mine == pytest.approx(sample.value, rel=0.2, abs=1.0)
    assert ours["process_start_time_seconds"].value("process_start_time_seconds") <= time.time()
