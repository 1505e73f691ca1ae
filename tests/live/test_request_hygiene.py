"""Header fields two parsers would read differently are refused (400) and never reach the upstream."""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.harness import Upstream, read_head

ALLOW = "version: 1\nrules:\n  - hosts: [api.test]\n    cleartext: allow\n"


def exchange(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    return read_head(sock)


@pytest.mark.parametrize(
    "header",
    [b"X-Note: a\rX-Injected: evil", b"X-Note: a\x00b", b"X-Note: \x00"],
    ids=["bare-cr", "nul", "only-nul"],
)
def test_ambiguous_headers_are_refused_in_plain_http(tlsgate, http_upstream: Upstream, header: bytes) -> None:
    gate = tlsgate(ALLOW, resolve={"api.test": http_upstream.port})
    target = f"http://api.test:{http_upstream.port}/x".encode()
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        answer = exchange(sock, b"GET " + target + b" HTTP/1.1\r\nHost: api.test\r\n" + header + b"\r\n\r\n")
    if answer.startswith(b"HTTP/1.1 400") and b"x-tlsgate-check" not in answer.lower():
        pytest.fail(f"mitmproxy refused it itself, so this case does not test tlsgate: {answer[:200]!r}")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"x-tlsgate-check: request" in answer.lower()
    assert http_upstream.requests == [] and http_upstream.connections == 0
    (finding,) = gate.wait_findings(1)
    assert finding["check"] == "request" and finding["evidence"]["kind"] == "ambiguous_header"


def test_ambiguous_headers_are_refused_inside_tls(tlsgate, https_upstream: Upstream) -> None:
    gate = tlsgate(resolve={"api.test": https_upstream.port})
    context = ssl.create_default_context(cafile=str(gate.ca_cert))
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as raw:
        target = f"api.test:{https_upstream.port}".encode()
        assert exchange(raw, b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n").startswith(b"HTTP/1.1 200")
        with context.wrap_socket(raw, server_hostname="api.test") as tls:
            answer = exchange(tls, b"GET /x HTTP/1.1\r\nHost: api.test\r\nX-Note: a\rX-Injected: evil\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert https_upstream.requests == []


def test_ordinary_headers_pass(tlsgate, http_upstream: Upstream) -> None:
    gate = tlsgate(ALLOW, resolve={"api.test": http_upstream.port})
    target = f"http://api.test:{http_upstream.port}/ok".encode()
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        answer = exchange(sock, b"GET " + target + b' HTTP/1.1\r\nHost: api.test\r\nX-Note: a\tb "quoted"\r\n\r\n')
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert [r.path for r in http_upstream.requests] == ["/ok"] and gate.findings() == []
