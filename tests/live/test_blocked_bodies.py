"""A request whose body mitmproxy would stream is decided at its headers: a blocked one never sends its body on.

mitmproxy streams bodies above `stream_large_bodies` (1 MiB in tlsgate) and runs the `request` hook only
after a streamed body went upstream, so these are refused before their body is read, by closing the
connection (mitmproxy cannot answer a request it has not read); the finding says why.
"""

from __future__ import annotations

import contextlib
import socket

import pytest

from tests.harness import Upstream, curl

ALLOW = "version: 1\nrules:\n  - hosts: [open.test]\n    cleartext: allow\n"


def send_until_closed(sock: socket.socket, total: int) -> tuple[int, bytes]:
    """Send up to `total` body bytes; returns what was sent before the proxy closed, and what it answered."""
    sent = 0
    with contextlib.suppress(OSError):
        for _ in range(total // 65536):
            sock.sendall(b"x" * 65536)
            sent += 65536
    sock.settimeout(5)
    answer = b""
    with contextlib.suppress(OSError):
        answer = sock.recv(65536)
    return sent, answer


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_large_post_to_a_blocked_url_is_refused_before_its_body_goes_anywhere(
    tlsgate, http_upstream: Upstream, framing: str
) -> None:
    gate = tlsgate(ALLOW, resolve={"api.test": http_upstream.port, "open.test": http_upstream.port})
    size = 64 << 20
    length = f"Content-Length: {size}" if framing == "content-length" else "Transfer-Encoding: chunked"
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        sock.sendall(f"POST http://api.test:{http_upstream.port}/upload HTTP/1.1\r\nHost: api.test\r\n{length}\r\n\r\n".encode())
        sent, answer = send_until_closed(sock, size)
    assert sent < size, "the proxy read the whole 64 MiB body of a blocked request"
    assert b"200 OK" not in answer
    assert http_upstream.connections == 0 and http_upstream.requests == []
    (finding,) = gate.wait_findings(1)
    assert (finding["check"], finding["action"]) == ("cleartext", "blocked")


def test_a_large_post_to_an_allowed_host_streams_through(tlsgate, http_upstream: Upstream, tmp_path) -> None:
    gate = tlsgate(ALLOW, resolve={"open.test": http_upstream.port})
    body = tmp_path / "body.bin"
    body.write_bytes(b"y" * (5 << 20))
    result = curl(gate.proxy_url, f"http://open.test:{http_upstream.port}/upload", "--data-binary", f"@{body}", "-H", "Expect:")
    assert result.status == 200
    assert len(http_upstream.requests) == 1 and len(http_upstream.requests[0].body) == 5 << 20
