"""Never an open proxy, live: proxy authentication, stock mitmdump with tlsgate's add-ons, and the captures
mitmproxy writes. They start real tlsgate and mitmdump processes, so they live here rather than in the unit
suite (where they took ~10 s of its time); the pure halves are in tests/unit/test_access.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness import Tlsgate, Upstream, curl, eventually


def test_proxy_authentication(tlsgate, http_upstream: Upstream) -> None:
    policy = "rules:\n  - hosts: legacy.test\n    cleartext: allow\n"
    gate = tlsgate(policy, resolve={"legacy.test": http_upstream.port}, args=("--proxyauth", "tester:s3cret-pw"))
    url = f"http://legacy.test:{http_upstream.port}/"
    assert curl(gate.proxy_url, url).status == 407
    assert http_upstream.connections == 0
    assert curl(gate.proxy_url, url, "--proxy-user", "tester:wrong").status == 407
    assert curl(gate.proxy_url, url, "--proxy-user", "tester:s3cret-pw").status == 200
    assert "s3cret-pw" not in gate.output
    for _ in range(3):  # the third and later failures within a minute are answered more and more slowly
        assert curl(gate.proxy_url, url, "--proxy-user", "tester:guess").status == 407
    assert eventually(lambda: "failed proxy authentications from 127.0.0.1 within a minute; slowing" in gate.output)
    assert curl(gate.proxy_url, url, "--proxy-user", "tester:s3cret-pw").status == 200  # the real password still works


def test_addons_load_into_stock_mitmdump(tmp_path: Path, http_upstream: Upstream) -> None:
    """Someone living in mitmdump/mitmweb gets the same verdicts with `-s "$(tlsgate script-path)"`."""
    mitmdump = Path(sys.executable).parent / "mitmdump"
    script = subprocess.run([sys.executable, "-m", "tlsgate", "script-path"], capture_output=True, text=True, check=True)
    policy = tmp_path / "p.yaml"
    policy.write_text("defaults:\n  cleartext: block\n")
    gate = Tlsgate(tmp_path)
    gate.proc = subprocess.Popen(
        [
            str(mitmdump),
            "--set",
            "flow_detail=0",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            "0",
            "--set",
            f"confdir={tmp_path / 'certs'}",
            "--set",
            "termlog_verbosity=info",
            "-s",
            script.stdout.strip(),
            "--set",
            f"tlsgate_policy={policy}",
            "--set",
            f"tlsgate_findings={gate.findings_path}",
            "--set",
            f"tlsgate_resolve=api.test:{http_upstream.port}:127.0.0.1",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    import threading

    threading.Thread(target=gate._pump, daemon=True).start()
    try:
        gate.port = int(gate.wait_for(r"listening at 127\.0\.0\.1:(\d+)", timeout=40).group(1))
        result = curl(gate.proxy_url, f"http://api.test:{http_upstream.port}/x")
        assert result.status == 403 and result.headers["x-tlsgate-check"] == "cleartext"
        assert gate.wait_findings(1)[0]["rule"] == "p.yaml:1"
        assert http_upstream.connections == 0
    finally:
        gate.stop()


def test_captures_tlsgate_lets_mitmproxy_write_are_owner_only(tlsgate, http_upstream: Upstream, tmp_path: Path) -> None:
    """`--set hardump=` or `save_stream_file=` capture every secret the apps send: never world-readable."""
    har, flows = tmp_path / "capture.har", tmp_path / "capture.flows"
    policy = "rules:\n  - hosts: legacy.test\n    cleartext: allow\n"
    gate = tlsgate(
        policy,
        resolve={"legacy.test": http_upstream.port},
        args=("--set", f"hardump={har}", "--set", f"save_stream_file={flows}"),
    )
    assert curl(gate.proxy_url, f"http://legacy.test:{http_upstream.port}/?password=x").status == 200
    gate.stop()
    assert har.exists() and flows.exists()
    assert har.stat().st_mode & 0o077 == 0 and flows.stat().st_mode & 0o077 == 0
