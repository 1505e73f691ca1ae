"""Broken upstreams end to end: stalls answered 504, garbage answered 502, both with a `fault` finding.

Real tlsgate, real curl, real loopback servers that misbehave on purpose: one
whose accept queue is full (connect never completes), one that accepts and
says nothing, one that completes TLS and says nothing, one that trickles a
body a byte a second, and servers answering garbage over plain HTTP and over
TLS. tlsgate runs with 1-second clocks; curl gets 15 s of patience, so "the
status arrived" proves tlsgate answered first, with no timing assertion.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.certgen import Chain
from tests.harness import Tlsgate, curl, eventually, full_accept_queue
from tests.tlsservers import serve_on_loopback

CLOCKS = (
    "tlsgate_connect_timeout=1",
    "tlsgate_tls_handshake_timeout=1",
    "tlsgate_response_head_timeout=1",
    "tlsgate_response_idle_timeout=1",
)
POLICY = """\
version: 1
defaults:
  mode: enforce
  cleartext: block
rules:
  - name: plain-lab
    hosts: legacy.test
    cleartext: allow
"""
PATIENCE = 15  # the client's own --max-time: far beyond tlsgate's 1-second clocks
HOLD = 20.0  # the longest any misbehaving server keeps a connection (bounded, and past the client's patience)


class Misbehaving:
    """A loopback server running `behave` on every accepted connection, in its own thread, until stopped."""

    def __init__(self, behave: Callable[[socket.socket, threading.Event], None]) -> None:
        self.stop = threading.Event()
        self.connections = 0

        def each(conn: socket.socket) -> None:
            self.connections += 1
            with contextlib.suppress(OSError, ssl.SSLError), conn:
                behave(conn, self.stop)

        self.sock = serve_on_loopback(each, threaded=True)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def servers() -> Iterator[Callable[[Callable[[socket.socket, threading.Event], None]], Misbehaving]]:
    started: list[Misbehaving] = []

    def start(behave: Callable[[socket.socket, threading.Event], None]) -> Misbehaving:
        server = Misbehaving(behave)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def tls_context(pki: tuple[Chain, Path, Path, Path]) -> ssl.SSLContext:
    _, _, cert_file, key_file = pki
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


def gate_for(tlsgate, hosts: dict[str, int]) -> Tlsgate:
    return tlsgate(POLICY, resolve=hosts, args=tuple(a for clock in CLOCKS for a in ("--set", clock)))


def assert_fault(gate: Tlsgate, result, status: int, kinds: tuple[str, ...], host: str) -> dict:
    """The answer came from tlsgate (not the client's own timeout), names the fault, and left one finding."""
    assert result.returncode in (0, 56), result  # 56: curl's "CONNECT tunnel failed, response 504"
    assert result.status == status, result
    assert result.headers.get("x-tlsgate-check") == "fault", result.headers
    if result.returncode == 0:  # curl shows no body of a refused CONNECT
        assert host in result.body and "Upstream failed" in result.body and "Blocked" not in result.body
    (finding,) = [f for f in gate.wait_findings(1) if f["check"] == "fault"]
    assert (finding["action"], finding["host"]) == ("failed", host), finding
    assert finding["evidence"]["kind"] in kinds, finding
    assert not [f for f in gate.findings() if f["check"] == "client_trust"], gate.findings()
    return finding


def silent(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait(HOLD)


def silent_after_tls(context: ssl.SSLContext) -> Callable[[socket.socket, threading.Event], None]:
    def behave(conn: socket.socket, stop: threading.Event) -> None:
        with context.wrap_socket(conn, server_side=True):
            stop.wait(HOLD)

    return behave


def trickle(conn: socket.socket, stop: threading.Event) -> None:
    conn.settimeout(5)
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n")
    for _ in range(int(HOLD)):
        if stop.wait(1):
            return
        conn.sendall(b"x")


# -- timeouts ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_server_that_never_accepts_is_a_504_connect_timeout(tlsgate, scheme: str) -> None:
    host = "legacy.test" if scheme == "http" else "api.test"
    with full_accept_queue() as port:
        gate = gate_for(tlsgate, {host: port})
        result = curl(gate.proxy_url, f"{scheme}://{host}:{port}/", "--cacert", str(gate.ca_cert), timeout=PATIENCE)
        finding = assert_fault(gate, result, 504, ("timeout",), host)
    assert finding["evidence"]["phase"] == "connect" and finding["evidence"]["option"] == "tlsgate_connect_timeout"
    assert 'tlsgate_upstream_connections_total{check="fault",decision="failed",transport="tcp"} 1.0' in gate.scrape()


def test_a_server_that_accepts_and_says_nothing_is_a_504_handshake_timeout(tlsgate, servers) -> None:
    server = servers(silent)
    gate = gate_for(tlsgate, {"api.test": server.port})
    result = curl(gate.proxy_url, f"https://api.test:{server.port}/", "--cacert", str(gate.ca_cert), timeout=PATIENCE)
    finding = assert_fault(gate, result, 504, ("timeout",), "api.test")
    assert "tlsgate_tls_handshake_timeout" in finding["detail"], finding
    assert (finding["evidence"]["phase"], finding["evidence"]["option"]) == ("tls_handshake", "tlsgate_tls_handshake_timeout")
    assert 'tlsgate_upstream_connections_total{check="fault",decision="failed",transport="tcp"} 1.0' in gate.scrape()


def test_a_tls_server_that_never_answers_the_request_is_a_504_response_head_timeout(tlsgate, servers, tls_context) -> None:
    server = servers(silent_after_tls(tls_context))
    gate = gate_for(tlsgate, {"api.test": server.port})
    result = curl(gate.proxy_url, f"https://api.test:{server.port}/", "--cacert", str(gate.ca_cert), timeout=PATIENCE)
    finding = assert_fault(gate, result, 504, ("timeout",), "api.test")
    assert finding["evidence"]["phase"] == "response_head", finding
    assert 'tlsgate_requests_total{check="fault",decision="failed",transport="tcp"} 1.0' in gate.scrape()


def test_a_plain_server_that_accepts_and_says_nothing_is_a_504(tlsgate, servers) -> None:
    server = servers(silent)
    gate = gate_for(tlsgate, {"legacy.test": server.port})
    result = curl(gate.proxy_url, f"http://legacy.test:{server.port}/", timeout=PATIENCE)
    finding = assert_fault(gate, result, 504, ("timeout",), "legacy.test")
    assert finding["evidence"]["phase"] == "response_head", finding
    assert 'tlsgate_requests_total{check="fault",decision="failed",transport="tcp"} 1.0' in gate.scrape()


def test_a_body_trickled_a_byte_a_second_is_a_504_and_none_of_it_is_passed_on(tlsgate, servers) -> None:
    server = servers(trickle)
    gate = gate_for(tlsgate, {"legacy.test": server.port})
    result = curl(gate.proxy_url, f"http://legacy.test:{server.port}/", timeout=PATIENCE)
    finding = assert_fault(gate, result, 504, ("timeout",), "legacy.test")
    assert finding["evidence"]["phase"] == "response_body", finding
    assert finding["evidence"]["option"] == "tlsgate_response_idle_timeout"
    assert "xx" not in result.body
    assert 'tlsgate_requests_total{check="fault",decision="failed",transport="tcp"} 1.0' in gate.scrape()


def test_an_app_hanging_up_as_the_certificate_arrives_after_a_stalled_upstream_is_not_client_trust(tlsgate, servers) -> None:
    """tlsgate holds the app's handshake while it waits for the upstream; the app's own timeout can end it just as
    tlsgate gives up and shows its certificate. That close is the stall's doing, not distrust."""
    server = servers(silent)
    gate = gate_for(tlsgate, {"api.test": server.port})
    with socket.create_connection(("127.0.0.1", gate.port), timeout=PATIENCE) as app:
        app.sendall(f"CONNECT api.test:{server.port} HTTP/1.1\r\nHost: api.test:{server.port}\r\n\r\n".encode())
        assert app.recv(4096).startswith(b"HTTP/1.1 200")
        outgoing = ssl.MemoryBIO()
        hello = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="api.test")
        with contextlib.suppress(ssl.SSLWantReadError):
            hello.do_handshake()
        app.sendall(outgoing.read())
        assert app.recv(5)[:1] == b"\x16"  # tlsgate's ServerHello: the upstream gave out, the app is shown a certificate
        app.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # and hangs up without an alert
    assert eventually(lambda: "Client TLS handshake failed" in gate.output, timeout=PATIENCE), gate.output
    # A second, ordinary request afterwards: once its finding is written, the first connection's are long done.
    after = curl(gate.proxy_url, f"https://api.test:{server.port}/", "--cacert", str(gate.ca_cert), timeout=PATIENCE)
    assert after.status == 504, after
    findings = gate.wait_findings(2)
    assert [(f["check"], f["evidence"]["kind"]) for f in findings] == [("fault", "timeout")] * 2, findings


# -- garbage ------------------------------------------------------------------------------------------------

GARBAGE = {
    "random-bytes": (bytes(range(256)) * 4, ("not_http",)),
    "hello-blank-line": (b"hello\r\n\r\n", ("not_http",)),
    "lone-newline": (b"\n", ("closed",)),  # HTTP skips blank lines before a status line: nothing was said
    "binary-then-close": (b"\x00\x01\x02\xff\xfe\x7f", ("not_http",)),
    "http09-body": (b"<html><body>secret-token-123</body></html>\n", ("not_http",)),
    "head-without-blank-line": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", ("not_http",)),
    "head-then-body-cut-short": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nsecret-token-123",
        ("truncated", "malformed_body"),
    ),
}


def answer_with(payload: bytes, context: ssl.SSLContext | None) -> Callable[[socket.socket, threading.Event], None]:
    def behave(conn: socket.socket, stop: threading.Event) -> None:
        channel = context.wrap_socket(conn, server_side=True) if context is not None else conn
        channel.settimeout(5)
        channel.recv(65536)
        channel.sendall(payload)
        stop.wait(0.2)
        channel.close()

    return behave


@pytest.mark.parametrize("variant", sorted(GARBAGE))
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_garbage_instead_of_an_http_answer_is_a_502_fault_never_passed_on(
    tlsgate, servers, tls_context: ssl.SSLContext, scheme: str, variant: str
) -> None:
    payload, kinds = GARBAGE[variant]
    host = "legacy.test" if scheme == "http" else "api.test"
    server = servers(answer_with(payload, tls_context if scheme == "https" else None))
    gate = gate_for(tlsgate, {host: server.port})
    result = curl(gate.proxy_url, f"{scheme}://{host}:{server.port}/", "--cacert", str(gate.ca_cert), timeout=PATIENCE)
    finding = assert_fault(gate, result, 502, kinds, host)
    assert "secret-token-123" not in result.body and "hello" not in result.body.lower().replace("hello from", "")
    assert "secret-token-123" not in gate.findings_path.read_text() and "secret-token-123" not in gate.output
    assert finding["evidence"]["phase"] in ("response_head", "response_body")
    assert 'tlsgate_requests_total{check="fault",decision="failed",transport="tcp"} 1.0' in gate.scrape()


def test_a_connection_that_answered_garbage_is_never_reused_for_the_next_request(tlsgate, servers) -> None:
    """Two requests on one client connection: the first upstream connection answers garbage and stays open;
    the second request must get a fresh connection and its own answer, not the leftovers of the first."""
    answers = iter([b"hello\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"])

    def behave(conn: socket.socket, stop: threading.Event) -> None:
        conn.settimeout(5)
        conn.recv(65536)
        conn.sendall(next(answers, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"))
        while conn.recv(65536):  # keep the connection open for reuse as long as tlsgate keeps it
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil\n")

    server = servers(behave)
    gate = gate_for(tlsgate, {"legacy.test": server.port})
    url = f"http://legacy.test:{server.port}/"
    done = curl(gate.proxy_url, url, url, timeout=PATIENCE)
    first, _, second = done.body.partition("HTTP/1.1 200")
    assert done.status == 502 and done.headers.get("x-tlsgate-check") == "fault", done
    assert "ok\n" in second and "evil" not in second, done
    assert server.connections == 2
    assert [f["evidence"]["kind"] for f in gate.findings()] == ["not_http"]


def test_a_streamed_body_that_goes_silent_is_cut_and_recorded_never_completed(tlsgate, servers) -> None:
    """Over 1 MiB the body streams: the app already has the head, so the stall can only cut the stream."""
    size = 2 * 1024 * 1024

    def stall_midway(conn: socket.socket, stop: threading.Event) -> None:
        conn.settimeout(5)
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * 65536)
        stop.wait(HOLD)

    server = servers(stall_midway)
    gate = gate_for(tlsgate, {"legacy.test": server.port})
    result = curl(gate.proxy_url, f"http://legacy.test:{server.port}/", "-o", "/dev/null", timeout=PATIENCE)
    assert result.status == 200 and result.returncode == 18, result  # 18: curl's "transfer closed with bytes remaining"
    (finding,) = gate.wait_findings(1)
    assert (finding["check"], finding["evidence"]["kind"], finding["evidence"]["phase"]) == ("fault", "timeout", "response_body")
    assert finding["evidence"]["received_bytes"] >= 65536


def test_a_slow_body_that_keeps_making_progress_is_not_cut(tlsgate, servers) -> None:
    """3 s of body at 2 KiB every 0.4 s under a 2 s clock: a total deadline would cut it, progress keeps it."""
    chunks = 8

    def slow(conn: socket.socket, stop: threading.Event) -> None:
        conn.settimeout(5)
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (chunks * 2048))
        for _ in range(chunks):
            if stop.wait(0.4):
                return
            conn.sendall(b"y" * 2048)

    server = servers(slow)
    gate = tlsgate(POLICY, resolve={"legacy.test": server.port}, args=("--set", "tlsgate_response_idle_timeout=2"))
    result = curl(gate.proxy_url, f"http://legacy.test:{server.port}/", timeout=PATIENCE)
    assert result.status == 200 and result.body == "y" * chunks * 2048, result.status
    assert gate.findings() == []


def test_a_close_delimited_body_cut_by_the_clock_is_a_504_not_a_complete_200(tlsgate, servers) -> None:
    """Without Content-Length the body ends at the close: the close tlsgate makes must not pass for that end."""

    def stall(conn: socket.socket, stop: threading.Event) -> None:
        conn.settimeout(5)
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial-")
        stop.wait(HOLD)

    server = servers(stall)
    gate = gate_for(tlsgate, {"legacy.test": server.port})
    result = curl(gate.proxy_url, f"http://legacy.test:{server.port}/", timeout=PATIENCE)
    finding = assert_fault(gate, result, 504, ("timeout",), "legacy.test")
    assert finding["evidence"]["phase"] == "response_body" and "partial-" not in result.body
    assert 'tlsgate_requests_total{check="fault",decision="failed",transport="tcp"} 1.0' in gate.scrape()


@pytest.mark.parametrize(
    ("payload", "status", "kinds"),
    [(b"hello garbage\r\n\r\n", 502, ("closed", "protocol_error")), (None, 504, ("timeout",))],
    ids=["garbage", "silent"],
)
def test_over_http2_the_stream_gets_the_fault_page_too(
    tlsgate, servers, pki: tuple[Chain, Path, Path, Path], payload: bytes | None, status: int, kinds: tuple[str, ...]
) -> None:
    """The app and the upstream both speak HTTP/2 (ALPN): a broken upstream stream is answered, not reset."""
    _, _, cert_file, key_file = pki
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2"])
    server = servers(silent_after_tls(context) if payload is None else answer_with(payload, context))
    gate = gate_for(tlsgate, {"api.test": server.port})
    url = f"https://api.test:{server.port}/"
    result = curl(gate.proxy_url, url, "--cacert", str(gate.ca_cert), "--http2", "-v", timeout=PATIENCE)
    assert "using HTTP/2" in result.stderr, result.stderr
    assert_fault(gate, result, status, kinds, "api.test")


def test_server_sent_events_reach_the_app_as_they_come_and_a_quiet_stream_is_not_cut(tlsgate, servers) -> None:
    """An SSE stream with a small heartbeat every 0.6 s under a 2 s clock: each event passes at once (not held to
    1 MiB), and a heartbeat far under 1 KiB a window keeps it alive, because a live stream is streamed."""
    events = 6
    first_seen = threading.Event()

    def sse(conn: socket.socket, stop: threading.Event) -> None:
        conn.settimeout(5)
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(events):
            chunk = b"data: tick %d\n\n" % i
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if i == 0 and not first_seen.wait(PATIENCE):  # the next event only after the app saw the first one
                return
            if stop.wait(0.6):
                return
        conn.sendall(b"0\r\n\r\n")

    server = servers(sse)
    gate = tlsgate(POLICY, resolve={"legacy.test": server.port}, args=("--set", "tlsgate_response_idle_timeout=2"))
    with socket.create_connection(("127.0.0.1", gate.port), timeout=PATIENCE) as app:
        app.sendall(f"GET http://legacy.test:{server.port}/events HTTP/1.1\r\nHost: legacy.test:{server.port}\r\n\r\n".encode())
        seen = b""
        while b"tick 0" not in seen:
            data = app.recv(65536)
            assert data, seen
            seen += data
        first_seen.set()  # the first event arrived while the server still held the stream open: streamed
        while b"\r\n0\r\n\r\n" not in seen:
            data = app.recv(65536)
            assert data, seen
            seen += data
    assert all(b"tick %d" % i in seen for i in range(events)) and seen.startswith(b"HTTP/1.1 200")
    assert gate.findings() == []
