"""Every check over HTTP/2, end to end: curl speaking h2 (by ALPN, and h2c by prior knowledge) through a real
tlsgate to nginx speaking h2, which logs every request that reached it.

Cleartext h2c is refused as cleartext; an h2 upstream whose chain misses the pins is refused; a client that
accepts a probe certificate over h2 is caught and its request goes nowhere; a JSON body with a provider secret
is refused over h2. Each refusal names the check and the rule, and nginx never logs the refused request.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Tlsgate, curl, eventually
from tests.tlsservers import NginxH2

POLICY = """\
version: 1
defaults:
  mode: enforce
devices:
  127.0.0.1: test-phone
pin_sets:
  wrong:
    pins:
      - sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
rules:
  - hosts: api.test
    payload: {ecb: block, secrets: block}
  - hosts: www.test
    pins: wrong
  - hosts: cdn.test
    client:
      probes: [self_signed]
"""
STRIPE = "sk" + "_live_" + "51Hx9qLyjWDarjtT1zdp7dcQz"  # built so no scanner mistakes this file for a leak


def nginx(directory: Path, pki: tuple[object, Path, Path, Path], h2c: bool = False) -> NginxH2:
    _, _, cert_file, key_file = pki
    directory.mkdir()
    return NginxH2(directory, cert_file, key_file, h2c=h2c).start()


@pytest.fixture
def upstream(tmp_path: Path, pki: tuple[object, Path, Path, Path]) -> Iterator[NginxH2]:
    server = nginx(tmp_path / "nginx", pki)
    yield server
    server.stop()


@pytest.fixture
def gate(tlsgate, upstream: NginxH2) -> Tlsgate:
    return tlsgate(POLICY, resolve={host: upstream.port for host in ("api.test", "www.test", "cdn.test")})


def h2(gate: Tlsgate, url: str, *extra: str) -> tuple[int, str, dict[str, str], str]:
    """curl --http2 through tlsgate: (status, the HTTP version curl spoke to tlsgate, headers, body)."""
    done = subprocess.run(
        ["curl", "-sS", "--noproxy", "", "-x", gate.proxy_url, "--http2", "--max-time", "20", "-o", "-",
         "-D", "/dev/stderr", "-w", "\n%{http_version}", *extra, url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    body, _, version = done.stdout.rpartition("\n")
    head = done.stderr.replace("\r\n", "\n").split("\n\n")
    last = [block for block in head if block.startswith("HTTP/")]
    lines = last[-1].split("\n") if last else []
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:]) if k}
    status = int(lines[0].split()[1]) if lines else 0
    return status, version, headers, body


def test_an_ordinary_h2_request_passes_and_reaches_nginx_over_h2(gate: Tlsgate, upstream: NginxH2) -> None:
    status, version, _, body = h2(gate, f"https://api.test:{upstream.port}/v1/ok", "--cacert", str(gate.ca_cert))
    assert (status, version, body) == (200, "2", "ok\n")
    assert upstream.requests() == ["GET /v1/ok HTTP/2.0 HTTP/2.0"]


def test_a_secret_in_a_json_body_over_h2_is_refused_before_nginx(gate: Tlsgate, upstream: NginxH2) -> None:
    status, version, headers, body = h2(
        gate,
        f"https://api.test:{upstream.port}/v1/profile",
        "--cacert", str(gate.ca_cert), "-H", "content-type: application/json", "-H", "accept: application/json",
        "--data", json.dumps({"user": "jane", "stripe": STRIPE}),
    )  # fmt: skip
    assert (status, version, headers["x-tlsgate-check"]) == (403, "2", "payload")
    page = json.loads(body)
    assert page["rule"].endswith("policy.yaml:11") and "secrets: ignore" in page["remedy"]
    assert upstream.requests() == []
    (finding,) = gate.wait_findings(1)
    assert finding["evidence"]["keys"][0]["field"] == "json.stripe" and STRIPE not in gate.findings_path.read_text()


def test_an_h2_upstream_that_misses_its_pins_is_refused(gate: Tlsgate, upstream: NginxH2) -> None:
    status, version, headers, body = h2(gate, f"https://www.test:{upstream.port}/", "--cacert", str(gate.ca_cert))
    assert status == 403 and headers["x-tlsgate-check"] == "pin", (status, headers, body)
    assert version == "2"
    assert upstream.requests() == []
    assert eventually(lambda: any(f["check"] == "pin" for f in gate.findings()))
    pins = [f for f in gate.findings() if f["check"] == "pin"]
    assert pins[0]["action"] == "blocked" and pins[0]["rule"].endswith("policy.yaml:13")


def test_a_client_that_accepts_a_probe_over_h2_is_caught_and_its_request_goes_nowhere(gate: Tlsgate, upstream: NginxH2) -> None:
    status, version, headers, _ = h2(gate, f"https://cdn.test:{upstream.port}/v1/feed", "-k")
    assert (status, version, headers["x-tlsgate-check"]) == (403, "2", "client_probe")
    assert upstream.requests() == []
    assert eventually(lambda: any(f["check"] == "client_probe" for f in gate.findings()))
    (probe,) = [f for f in gate.findings() if f["check"] == "client_probe"]
    assert probe["action"] == "blocked" and probe["evidence"]["kind"] == "self_signed"
    assert "sent GET" in probe["detail"]
    status, version, _, _ = h2(gate, f"https://cdn.test:{upstream.port}/v1/feed", "-k")  # probed once: through
    assert (status, version) == (200, "2") and upstream.requests() == ["GET /v1/feed HTTP/2.0 HTTP/2.0"]


def test_h2c_by_prior_knowledge_is_refused_as_cleartext(tlsgate, tmp_path: Path, pki: tuple[object, Path, Path, Path]) -> None:
    """curl through a CONNECT tunnel (`-p`) speaking HTTP/2 in the clear from its first byte, to an nginx that
    speaks h2c: refused with a cleartext finding that names h2c (mitmproxy alone would close it without one)."""
    server = nginx(tmp_path / "h2c", pki, h2c=True)
    try:
        gate = tlsgate(POLICY, resolve={"api.test": server.port})
        refused = curl(gate.proxy_url, f"http://api.test:{server.port}/v1/ok", "--http2-prior-knowledge", "-p")
        assert refused.status == 0 and refused.returncode != 0, refused
        assert eventually(lambda: any(f["check"] == "cleartext" for f in gate.findings()))
        (finding,) = gate.findings()
        assert (finding["action"], finding["host"], finding["evidence"]["h2c"]) == ("blocked", "api.test", True)
        assert "HTTP/2 by prior knowledge, h2c" in finding["detail"] and "cleartext: allow" in finding["remedy"]
        assert server.requests() == []
        # the same nginx, asked directly, does answer h2c: the refusal was tlsgate's
        direct = subprocess.run(
            ["curl", "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{server.port}/direct"], capture_output=True, text=True
        )
        assert direct.stdout == "ok\n" and server.requests() == ["GET /direct HTTP/2.0 HTTP/2.0"]
    finally:
        server.stop()
