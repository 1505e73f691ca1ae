"""Never an open proxy: loopback by default, public clients refused, proxy auth works; stock mitmdump too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO, Tlsgate, Upstream, curl, eventually
from tlsgate.app.runner import RunConfig, banner, mitmproxy_options
from tlsgate.policy import load_policy


def config(**kwargs: object) -> RunConfig:
    return RunConfig(policy_paths=[], policy=load_policy([REPO / "policies" / "default.yaml"]), **kwargs)  # type: ignore[arg-type]


def test_public_clients_are_refused_unless_allowed() -> None:
    assert mitmproxy_options(config())["block_global"] is True
    assert mitmproxy_options(config(listen_host="0.0.0.0"))["block_global"] is True
    assert mitmproxy_options(config(listen_host="0.0.0.0", allow_public_clients=True))["block_global"] is False
    assert config().listen_host == "127.0.0.1"


def test_banner_warns_about_access_on_non_loopback() -> None:
    lines = banner(config(listen_host="0.0.0.0"), Path("certs/ca.pem"), "AA:BB")
    assert any("public addresses refused" in line and "not required" in line for line in lines)
    assert not any(line.startswith("access:") for line in banner(config(), Path("c"), "AA"))


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


def test_proxyauth_is_taken_from_the_environment_and_warned_about_on_the_command_line(tmp_path: Path) -> None:
    from tlsgate.app.cli import build_parser

    os.environ["TLSGATE_PROXYAUTH"] = "tester:from-env"
    try:
        assert build_parser().parse_args(["run"]).proxyauth == "tester:from-env"
    finally:
        del os.environ["TLSGATE_PROXYAUTH"]
    assert build_parser().parse_args(["run"]).proxyauth is None
    from tlsgate.app.runner import worker_argv

    assert "--proxyauth" not in worker_argv(config(proxyauth="tester:pw"), 0, 8080, None)


def test_addons_load_into_stock_mitmdump(tmp_path: Path, http_upstream: Upstream) -> None:
    """Someone living in mitmdump/mitmweb gets the same verdicts with `-s tlsgate/addons/script.py`."""
    mitmdump = Path(sys.executable).parent / "mitmdump"
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
            str(REPO / "tlsgate" / "addons" / "script.py"),
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


def test_documentation_and_tunnel_ranges_are_not_lab_clients() -> None:
    from tlsgate.tls.lan import outside_the_lab

    for address in ("192.0.2.9", "198.51.100.7", "203.0.113.1", "2001:db8::1", "2001:0:4136:e378::1", "2002:c000:204::1",
                    "::ffff:198.51.100.7"):  # fmt: skip
        assert outside_the_lab(address), address
    for address in ("10.0.0.2", "192.168.1.5", "100.64.0.9", "fd00::1", "127.0.0.1", "8.8.8.8", "not an address"):
        assert not outside_the_lab(address), address  # LAN, CGNAT, ULA, loopback; global ones are block_global's
