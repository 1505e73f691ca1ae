"""Plain-HTTP enforcement end to end: real tlsgate, real curl and httpx, real upstreams."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path

import httpx

from tests.harness import Upstream, curl

POLICY = """\
version: 1
defaults:
  mode: enforce
  cleartext: block
devices:
  127.0.0.1: test-laptop
rules:
  - name: legacy
    hosts: legacy.test
    cleartext: allow
  - name: watched
    hosts: "*.cdn.test"
    mode: report
"""


def test_https_passes_and_plain_http_is_blocked_without_reaching_upstream(
    tlsgate, https_upstream: Upstream, http_upstream: Upstream
) -> None:
    gate = tlsgate(resolve={"api.test": https_upstream.port, "www.test": http_upstream.port})
    ok = curl(gate.proxy_url, f"https://api.test:{https_upstream.port}/hello", "--cacert", str(gate.ca_cert))
    assert ok.status == 200, ok
    assert ok.body == "hello from https-upstream\n"

    blocked = curl(gate.proxy_url, f"http://www.test:{http_upstream.port}/login")
    assert blocked.status == 403
    assert http_upstream.connections == 0, "a blocked request must not even open a connection upstream"
    assert blocked.headers["x-tlsgate-check"] == "cleartext"
    rule = blocked.headers["x-tlsgate-rule"]
    assert rule.endswith("policies/default.yaml:5"), rule  # the `defaults:` line of the embedded policy
    assert "www.test" in blocked.body and "cleartext: allow" in blocked.body and rule in blocked.body
    (finding,) = gate.wait_findings(1)
    # the kind README's cleartext section documents (`plain_<protocol>`), as MQTT and SMTP findings carry it
    assert (finding["evidence"]["kind"], finding["evidence"]["protocol"]) == ("plain_http", "http")


def test_block_page_names_rule_line_and_answers_json(tlsgate, http_upstream: Upstream, tmp_path: Path) -> None:
    gate = tlsgate(POLICY, resolve={"api.test": http_upstream.port})
    response = httpx.get(
        f"http://api.test:{http_upstream.port}/v1/items",
        proxy=gate.proxy_url,
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 403
    body = response.json()
    assert body["check"] == "cleartext" and body["host"] == "api.test"
    assert body["rule"] == "policy.yaml:2"  # no rule matched api.test: the defaults block decided
    assert "https://" in body["remedy"]
    assert http_upstream.connections == 0


def test_allowed_host_passes_and_records_nothing(tlsgate, http_upstream: Upstream) -> None:
    gate = tlsgate(POLICY, resolve={"legacy.test": http_upstream.port})
    result = curl(gate.proxy_url, f"http://legacy.test:{http_upstream.port}/old")
    assert result.status == 200 and result.body == "hello from http-upstream\n"
    assert [r.path for r in http_upstream.requests] == ["/old"]
    assert gate.findings() == []


def test_report_mode_forwards_and_records(tlsgate, http_upstream: Upstream, tmp_path: Path) -> None:
    gate = tlsgate(POLICY, resolve={"img.cdn.test": http_upstream.port})
    result = curl(gate.proxy_url, f"http://img.cdn.test:{http_upstream.port}/a.png")
    assert result.status == 200
    assert len(http_upstream.requests) == 1
    (finding,) = gate.wait_findings(1)
    assert finding["action"] == "reported" and finding["check"] == "cleartext"
    assert finding["rule"] == "policy.yaml:11"
    assert finding["device"] == "test-laptop"
    assert finding["host"] == "img.cdn.test" and finding["port"] == http_upstream.port


def test_credentials_are_named_but_never_recorded(tlsgate, http_upstream: Upstream) -> None:
    gate = tlsgate(POLICY, resolve={"api.test": http_upstream.port, "img.cdn.test": http_upstream.port})
    secrets = ["s3cr3t-bearer", "hunter2", "k3y-value", "sess-cookie-val", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig"]
    blocked = curl(
        gate.proxy_url,
        f"http://api.test:{http_upstream.port}/login?api_key={secrets[2]}&state={secrets[4]}&page=2",
        "-H",
        f"Authorization: Bearer {secrets[0]}",
        "-H",
        f"Cookie: session={secrets[3]}",
        "--data",
        f"username=alice&password={secrets[1]}",
    )
    assert blocked.status == 403
    reported = httpx.post(
        f"http://img.cdn.test:{http_upstream.port}/sync",
        proxy=gate.proxy_url,
        json={"user": {"email": "a@b.c", "password": secrets[1]}, "refresh_token": secrets[0]},
    )
    assert reported.status_code == 200
    findings = gate.wait_findings(2)
    first, second = findings
    assert first["severity"] == "high" and first["action"] == "blocked"
    kinds = {(c["kind"], c["name"]) for c in first["evidence"]["credentials"]}
    assert kinds == {
        ("authorization", "authorization: Bearer"),
        ("cookie", "session"),
        ("query", "api_key"),
        ("query", "state"),
        ("form", "password"),
    }
    assert first["evidence"]["url"].endswith("/login?api_key=[REDACTED]&state=[REDACTED]&page=2")
    assert {(c["kind"], c["name"]) for c in second["evidence"]["credentials"]} == {
        ("json", "password"),
        ("json", "refresh_token"),
    }
    everything = gate.findings_path.read_text() + gate.output + blocked.body
    for secret in secrets:
        assert secret not in everything


def test_websocket_over_plain_http_is_blocked(tlsgate, http_upstream: Upstream) -> None:
    gate = tlsgate(POLICY, resolve={"api.test": http_upstream.port})
    result = curl(
        gate.proxy_url,
        f"http://api.test:{http_upstream.port}/socket",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    )
    assert result.status == 403
    (finding,) = gate.wait_findings(1)
    assert (finding["evidence"]["kind"], finding["evidence"]["protocol"]) == ("plain_ws", "ws")
    assert http_upstream.connections == 0


def test_cleartext_inside_a_connect_tunnel_is_blocked(tlsgate, http_upstream: Upstream) -> None:
    """Apps that CONNECT to port 80 and speak plain HTTP inside must not slip past the check."""
    gate = tlsgate(POLICY, resolve={"api.test": http_upstream.port})
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        sock.sendall(f"CONNECT api.test:{http_upstream.port} HTTP/1.1\r\nHost: api.test\r\n\r\n".encode())
        assert b" 200 " in sock.recv(4096)
        sock.sendall(b"GET /tunnel HTTP/1.1\r\nHost: api.test\r\nAccept: application/json\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403")
    assert json.loads(body)["check"] == "cleartext"
    assert http_upstream.requests == []


def test_malformed_requests_do_not_crash_the_proxy(tlsgate, http_upstream: Upstream) -> None:
    gate = tlsgate(POLICY, resolve={"legacy.test": http_upstream.port})
    for junk in (b"\x16\x03\x01\x00\x05hello", b"GET\r\n\r\n", b"GET http://[::1 HTTP/1.1\r\n\r\n", b"\x00" * 1000):
        with socket.create_connection(("127.0.0.1", gate.port), timeout=5) as sock:
            sock.sendall(junk)
            sock.settimeout(2)
            with contextlib.suppress(TimeoutError, ConnectionError):
                sock.recv(1024)
    result = curl(gate.proxy_url, f"http://legacy.test:{http_upstream.port}/still-alive")
    assert result.status == 200
    assert gate.proc is not None and gate.proc.poll() is None
