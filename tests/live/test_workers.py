"""Several workers behind one port: each enforces the same policy, reloads included, and all stop together."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from tests.harness import Upstream, curl, eventually
from tests.live.test_metrics import value

POLICY = "version: 1\nrules:\n  - hosts: legacy.test\n    cleartext: allow\n"


def worker_metrics(gate) -> list[str]:
    assert eventually(lambda: len(re.findall(r"metrics listening at (http://\S+)/metrics", gate.output)) == 2, timeout=30)
    return re.findall(r"metrics listening at (http://\S+)/metrics", gate.output)


def scrape(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return response.read().decode()


def test_two_workers_share_the_port_and_the_policy(tlsgate, http_upstream: Upstream, tmp_path: Path) -> None:
    gate = tlsgate(POLICY, resolve={"legacy.test": http_upstream.port}, args=("--workers", "2"))
    assert "workers:  2 processes sharing port" in gate.output
    urls = worker_metrics(gate)
    for i in range(30):  # curl opens a new connection each time, so the kernel spreads them
        assert curl(gate.proxy_url, f"http://api.test:{http_upstream.port}/{i}").status == 403
    assert http_upstream.connections == 0
    counts = [value(scrape(url), "tlsgate_requests_total", decision="blocked", check="cleartext") for url in urls]
    assert sum(counts) == 30 and all(c > 0 for c in counts), counts

    assert curl(gate.proxy_url, f"http://legacy.test:{http_upstream.port}/").status == 200
    mark = len(gate.lines)
    (tmp_path / "policy.yaml").write_text("version: 1\n")
    assert eventually(lambda: sum("policy reloaded" in line for line in gate.lines[mark:]) == 2, timeout=20), gate.output
    for i in range(10):
        assert curl(gate.proxy_url, f"http://legacy.test:{http_upstream.port}/{i}").status == 403

    gate.stop()
    time.sleep(0.5)
    leftover = subprocess.run(["pgrep", "-f", f"--confdir {tmp_path / 'certs'} --findings"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "workers must stop with the supervisor"
