"""Metrics from a live tlsgate: promtool-clean, counting what happened, bounded, read back by real Prometheus."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.certgen import make_chain
from tests.harness import Upstream, curl, eventually, free_port
from tlsgate.tls.pins import spki_pin

POLICY = """\
version: 1
devices:
  127.0.0.1: test-laptop
rules:
  - hosts: legacy.test
    cleartext: allow
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples(text).items() if n == name and set(labels.items()) <= set(ls))


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is not installed: `apt-get install prometheus` (.ci/run does this)"
    return path


def traffic(gate, http_upstream: Upstream, https_upstream: Upstream) -> None:
    for path in ("/a", "/b"):
        assert curl(gate.proxy_url, f"http://api.test:{http_upstream.port}{path}").status == 403
    assert curl(gate.proxy_url, f"http://legacy.test:{http_upstream.port}/ok").status == 200
    assert curl(gate.proxy_url, f"https://api.test:{https_upstream.port}/", "--cacert", str(gate.ca_cert)).status == 200


@pytest.fixture
def busy_gate(tlsgate, http_upstream: Upstream, https_upstream: Upstream):
    # Plain HTTP to api.test is blocked before any lookup, so only the HTTPS port needs resolving.
    gate = tlsgate(POLICY, resolve={"api.test": https_upstream.port, "legacy.test": http_upstream.port})
    traffic(gate, http_upstream, https_upstream)
    return gate


def test_live_scrape_is_promtool_clean_and_counts_decisions(busy_gate) -> None:
    text = busy_gate.scrape()
    lint = subprocess.run([need("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0 and lint.stdout == "" and lint.stderr == "", lint.stdout + lint.stderr
    assert value(text, "tlsgate_requests_total", decision="blocked", check="cleartext") == 2
    assert value(text, "tlsgate_requests_total", decision="allowed") == 2
    assert value(text, "tlsgate_findings_total", check="cleartext", action="blocked", device="test-laptop") == 2
    assert value(text, "tlsgate_tls_handshakes_total", side="server", result="ok", version="TLSv1.3") == 1
    assert value(text, "tlsgate_tls_handshakes_total", side="client", result="ok") == 1
    assert value(text, "tlsgate_upstream_connections_total", decision="allowed") == 1
    assert value(text, "tlsgate_upstream_response_seconds_count") == 2
    assert value(text, "tlsgate_policy_rules") == 1
    assert value(text, "tlsgate_policy_reloads_total", result="ok") == 1
    assert value(text, "tlsgate_build_info", version="0.1.0") == 1


def test_health_and_readiness(busy_gate) -> None:
    assert http_get(f"{busy_gate.metrics_url}/healthz") == (200, "ok\n")
    status, body = http_get(f"{busy_gate.metrics_url}/readyz")
    assert status == 200 and body.startswith("ready: 1 rules")
    assert http_get(f"{busy_gate.metrics_url}/nope")[0] == 404


def test_exposition_is_prometheus_clients_openmetrics_gzip_and_head(busy_gate) -> None:
    import gzip

    url = f"{busy_gate.metrics_url}/metrics"
    plain = urllib.request.urlopen(url, timeout=10)
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = plain.read().decode()
    assert value(text, "process_resident_memory_bytes") > 1e6 and value(text, "process_open_fds") > 3

    asked = urllib.request.Request(
        url, headers={"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(asked, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
        assert answer.headers["Content-Encoding"] == "gzip"
        openmetrics = gzip.decompress(answer.read()).decode()
    assert openmetrics.rstrip().endswith("# EOF") and "tlsgate_requests_total" in openmetrics
    lint = subprocess.run([need("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    filtered = urllib.request.urlopen(f"{url}?name[]=tlsgate_build_info", timeout=10).read().decode()
    assert "tlsgate_build_info" in filtered and "tlsgate_requests_total" not in filtered

    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as head:
        assert head.status == 200 and head.read() == b"" and int(head.headers["Content-Length"]) > 1000


def test_reloads_are_counted(tlsgate, tmp_path: Path) -> None:
    gate = tlsgate(POLICY)
    policy = tmp_path / "policy.yaml"
    mark = len(gate.lines)
    policy.write_text("rules: [oops\n")
    gate.wait_for("keeping the last good policy", start=mark)
    text = gate.scrape()
    assert value(text, "tlsgate_policy_reloads_total", result="failed") == 1
    assert value(text, "tlsgate_policy_rules") == 1
    mark = len(gate.lines)
    policy.write_text(POLICY + "  - hosts: new.test\n    cleartext: allow\n")
    gate.wait_for("policy reloaded", start=mark)
    text = gate.scrape()
    assert value(text, "tlsgate_policy_reloads_total", result="ok") == 2
    assert value(text, "tlsgate_policy_rules") == 2
    assert value(text, "tlsgate_policy_last_reload_success_timestamp_seconds") > time.time() - 60


def test_pin_results_and_certificate_expiry_per_named_host(tlsgate, pki, https_upstream: Upstream) -> None:
    chain = pki[0]
    spare = spki_pin(make_chain().leaf.cert)
    policy = f"pin_sets:\n  api:\n    pins: [{spki_pin(chain.intermediate.cert)}, {spare}]\nrules:\n  - hosts: api.test\n    pins: api\n"
    gate = tlsgate(policy, resolve={"api.test": https_upstream.port, "www.test": https_upstream.port})
    assert curl(gate.proxy_url, f"https://api.test:{https_upstream.port}/", "--cacert", str(gate.ca_cert)).status == 200
    assert curl(gate.proxy_url, f"https://www.test:{https_upstream.port}/", "--cacert", str(gate.ca_cert)).status == 200
    text = gate.scrape()
    assert value(text, "tlsgate_pin_checks_total", result="match") == 1
    earliest = min(c.not_valid_after_utc.timestamp() for c in chain.certs)
    assert value(text, "tlsgate_certificate_expiry_timestamp_seconds", host="api.test") == earliest
    assert 'host="www.test"' not in text, "hosts the policy does not name must never become labels"


def test_label_cardinality_stays_bounded(tlsgate) -> None:
    gate = tlsgate(POLICY)
    before = len(samples(gate.scrape()))
    hosts = [f"host{i}.example.test" for i in range(40)]
    for host in hosts:
        assert curl(gate.proxy_url, f"http://{host}/login?token=x").status == 403
    text = gate.scrape()
    assert not any(host in text for host in hosts) and "token" not in text and "login" not in text
    grown = len(samples(text)) - before
    assert grown <= 12, f"40 distinct hosts added {grown} series"


def test_real_prometheus_scrapes_and_reads_back_counts(busy_gate, tmp_path: Path) -> None:
    target = busy_gate.metrics_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: tlsgate\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    prometheus = subprocess.Popen(
        [
            need("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    api = f"http://127.0.0.1:{port}/api/v1/query?query="

    def query(expr: str) -> list[dict]:
        try:
            status, body = http_get(api + urllib.parse.quote(expr))
        except urllib.error.URLError:  # not listening yet
            return []
        return json.loads(body)["data"]["result"] if status == 200 else []

    try:
        assert eventually(lambda: bool(query('up{job="tlsgate"} == 1')), timeout=60), "Prometheus never scraped tlsgate"
        blocked = 'sum(tlsgate_requests_total{decision="blocked"})'
        assert eventually(lambda: bool(query(blocked)), timeout=30)
        assert float(query(blocked)[0]["value"][1]) == 2
        allowed = query('sum(tlsgate_requests_total{decision="allowed"})')
        assert float(allowed[0]["value"][1]) == 2
        devices = query('sum by (device) (tlsgate_findings_total{check="cleartext"})')
        assert [(d["metric"]["device"], float(d["value"][1])) for d in devices] == [("test-laptop", 2.0)]
    finally:
        prometheus.terminate()
        prometheus.wait(20)


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_idle_connections_to_the_metrics_port_hold_no_threads_and_do_not_lock_scrapers_out(tlsgate) -> None:
    """The standard library's threading server held one thread per idle connection (1,000 sockets, 1,000 threads)."""
    gate = tlsgate()
    host, port = urllib.parse.urlsplit(gate.metrics_url).netloc.rsplit(":", 1)
    before = thread_count(gate.proc.pid)
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(300)]
    try:
        time.sleep(1)
        during = thread_count(gate.proc.pid)
        assert during <= before + 2, (before, during)
        closed = 0
        for sock in idle:  # beyond the cap, connections are closed at once rather than queued
            sock.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                closed += sock.recv(1) == b""
        assert closed >= 300 - 64
    finally:
        for sock in idle:
            sock.close()
    assert eventually(lambda: b"tlsgate_" in urllib.request.urlopen(gate.metrics_url + "/metrics", timeout=5).read(), timeout=15)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether tlsgate closed this connection (EOF or reset); False while it is still open."""
    sock.settimeout(0)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def scrape_with_promtool(url: str) -> str:
    """A scrape by promtool itself (`promtool check metrics` reads the body of a real HTTP GET from curl)."""
    body = subprocess.run(["curl", "-sS", "--max-time", "10", url], capture_output=True, text=True, timeout=30)
    assert body.returncode == 0, body.stderr
    lint = subprocess.run([need("promtool"), "check", "metrics"], input=body.stdout, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    return body.stdout


@pytest.mark.parametrize("idle_count", [64, 500])
def test_idle_connections_cannot_deny_scrapes_and_are_closed_in_bounded_time(tlsgate, idle_count: int) -> None:
    """Any local process holding 64 idle connections made every scrape fail with a reset, for as long as it held them."""
    gate = tlsgate()
    host, port = urllib.parse.urlsplit(gate.metrics_url).netloc.rsplit(":", 1)
    idle = []
    try:
        for batch in range(0, idle_count, 100):
            idle += [socket.create_connection((host, int(port)), timeout=10) for _ in range(min(100, idle_count - batch))]
            # the scraper comes after a batch of idle connections each time: still answered
            status, body = http_get(f"{gate.metrics_url}/metrics")
            assert status == 200 and "tlsgate_build_info" in body, (len(idle), status)
        assert "tlsgate_requests_total" in scrape_with_promtool(f"{gate.metrics_url}/metrics")
        assert http_get(f"{gate.metrics_url}/healthz") == (200, "ok\n")
        open_now = sum(not closed_by_server(sock) for sock in idle)
        assert open_now <= 64, f"{open_now} idle connections held open; the bound is 64"
        # the rest are closed when the 10 s to send a request run out (generous margin on a busy machine)
        assert eventually(lambda: all(closed_by_server(sock) for sock in idle), timeout=60), "idle connections left open"
    finally:
        for sock in idle:
            sock.close()
