"""A network fault is not a policy verdict: 502 and a `fault` finding, never 403 and a `blocked` one."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from tests.harness import curl
from tests.tlsservers import serve_on_loopback


class RawServer:
    """Accepts TCP connections on loopback and does one bad thing to each (reset, plain text, ...)."""

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        self.sock = serve_on_loopback(lambda conn: self._each(behave, conn))
        self.port = self.sock.getsockname()[1]

    @staticmethod
    def _each(behave: Callable[[socket.socket], None], conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            behave(conn)

    def close(self) -> None:
        self.sock.close()


def reset(conn: socket.socket) -> None:
    conn.settimeout(2)
    with contextlib.suppress(OSError):
        conn.recv(4096)  # the proxy's ClientHello
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def plain_text(conn: socket.socket) -> None:
    conn.settimeout(2)
    with contextlib.suppress(OSError):
        conn.recv(4096)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    time.sleep(0.2)
    conn.close()


@pytest.fixture(params=[(reset, ("reset", "closed")), (plain_text, ("not_tls",))], ids=["reset", "plain-text"])
def broken(request: pytest.FixtureRequest) -> Iterator[tuple[RawServer, tuple[str, ...]]]:
    behave, kinds = request.param
    server = RawServer(behave)
    yield server, kinds
    server.close()


def test_a_broken_upstream_is_a_502_fault_not_a_block(tlsgate, broken: tuple[RawServer, tuple[str, ...]]) -> None:
    server, kinds = broken
    gate = tlsgate(resolve={"api.test": server.port})
    result = curl(gate.proxy_url, f"https://api.test:{server.port}/", "--cacert", str(gate.ca_cert))
    assert result.status == 502, result
    assert result.headers.get("x-tlsgate-check") == "fault"
    assert "Upstream failed" in result.body and "Blocked" not in result.body
    (finding,) = gate.wait_findings(1)
    assert (finding["check"], finding["action"], finding["severity"]) == ("fault", "failed", "low")
    assert finding["evidence"]["kind"] in kinds, finding
    scraped = gate.scrape()
    assert 'tlsgate_upstream_connections_total{check="fault",decision="failed",transport="tcp"} 1.0' in scraped
    assert 'decision="blocked"' not in "\n".join(
        line for line in scraped.splitlines() if line.startswith("tlsgate_requests_total")
    )
