"""An allowed client must not reach the proxy host's own services through tlsgate (Squid's `to_localhost`)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from tests.harness import Upstream, curl
from tests.tlsservers import serve_on_loopback

ALLOW_LOCAL = """\
version: 1
rules:
  - hosts: [127.0.0.1, localhost]
    local_destinations: allow
    cleartext: allow
"""


class Service:
    """A TCP service bound to loopback only (a database, an admin port), counting who reaches it."""

    def __init__(self) -> None:
        self.accepted = 0
        self.sock = serve_on_loopback(self._answer)
        self.port = self.sock.getsockname()[1]

    def _answer(self, conn: socket.socket) -> None:
        self.accepted += 1
        with conn, contextlib.suppress(OSError):
            conn.sendall(b"+OK secret service\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def service() -> Iterator[Service]:
    found = Service()
    yield found
    found.close()


def connect_through(proxy_port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        data = b""
        while len(data) < 65536:
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and (b" 200 " in head.split(b"\r\n", 1)[0] or len(body) >= content_length(head)):
                break
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


@pytest.mark.parametrize("target", ["127.0.0.1", "localhost", "[::1]", "0.0.0.0"])
def test_connect_to_the_proxy_hosts_loopback_is_refused(tlsgate, service: Service, target: str) -> None:
    gate = tlsgate()
    answer = connect_through(gate.port, f"{target}:{service.port}")
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"x-tlsgate-check: destination" in answer.lower()
    assert b"local_destinations: allow" in answer and b"--resolve" in answer
    assert service.accepted == 0
    (finding,) = gate.wait_findings(1)
    assert finding["check"] == "destination" and finding["action"] == "blocked"
    assert finding["evidence"]["kind"] in ("loopback", "unspecified") and finding["port"] == service.port


def test_socks5_to_loopback_is_refused_before_connecting(tlsgate, service: Service) -> None:
    gate = tlsgate(args=("--mode", "socks5"))
    result = curl(f"socks5://127.0.0.1:{gate.port}", f"telnet://127.0.0.1:{service.port}", timeout=5)
    assert result.returncode != 0 and service.accepted == 0, result
    (finding,) = gate.wait_findings(1)
    assert finding["check"] == "destination" and finding["evidence"]["kind"] == "loopback"


def test_plain_http_to_the_metadata_address_is_refused(tlsgate) -> None:
    gate = tlsgate("version: 1\nrules:\n  - hosts: [169.254.169.254]\n    cleartext: allow\n")
    result = curl(gate.proxy_url, "http://169.254.169.254/latest/meta-data/", timeout=10)
    assert result.status == 403  # cleartext is allowed for it, the destination check still refuses
    finding = next(f for f in gate.wait_findings(1) if f["check"] == "destination")
    assert finding["evidence"]["kind"] == "link_local"


def test_a_rule_or_resolve_lets_the_operator_allow_a_local_upstream(tlsgate, service: Service, http_upstream: Upstream) -> None:
    gate = tlsgate(ALLOW_LOCAL)
    answer = connect_through(gate.port, f"127.0.0.1:{service.port}")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    result = curl(gate.proxy_url, f"http://localhost:{http_upstream.port}/ok")
    assert result.status == 200 and [r.path for r in http_upstream.requests] == ["/ok"]
    assert gate.findings() == []


def test_resolve_names_a_local_upstream_without_a_policy_change(tlsgate, https_upstream: Upstream) -> None:
    gate = tlsgate(resolve={"api.test": https_upstream.port})
    result = curl(gate.proxy_url, f"https://api.test:{https_upstream.port}/ok", "--cacert", str(gate.ca_cert))
    assert result.status == 200 and gate.findings() == []
