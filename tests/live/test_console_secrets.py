"""Every mitmproxy line that quotes what a client sent passes tlsgate's redaction: a planted token never reaches
the console, the findings or the metrics.

mitmproxy's own lines echo request bytes in many places (read from its source,
mitmproxy 12.2): the Dumper's WebSocket message lines end in the request path
and query, its close line in the close reason; the WebSocket layer logs ping and
pong payloads; the HTTP/1 reader quotes an unparsable header line ("Invalid
header line: b'...'") and an invalid Content-Length; the HTTP/2 layer quotes
header values h2 refuses; the TLS layer names the SNI of a failed handshake.
Real clients here: a wsproto client over ws://, raw sockets, an h2 client over
TLS, a hand-built ClientHello, at `-v` (every log line, flow_detail=2).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, Pong, Request, TextMessage

from tests.harness import Tlsgate, Upstream, read_head, read_until_closed
from tests.live.test_log_injection import evil_sni_hello

SECRET = "Zq8sP1antedTok3nValue"  # letters and digits, like real tokens
POLICY = """\
version: 1
rules:
  - hosts: ws.test
    cleartext: allow
"""


class EchoWebSocketServer:
    """A plain ws:// server (wsproto) that echoes text messages and answers pings and closes."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.messages: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        with conn:
            while data := conn.recv(65536):
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Request):
                        conn.sendall(ws.send(AcceptConnection()))
                    elif isinstance(event, TextMessage):
                        self.messages.append(event.data)
                        conn.sendall(ws.send(Message(data=event.data)))
                    elif isinstance(event, Ping):
                        conn.sendall(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        conn.sendall(ws.send(event.response()))
                        return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def ws_server() -> Iterator[EchoWebSocketServer]:
    server = EchoWebSocketServer()
    yield server
    server.close()


def websocket_session(gate: Tlsgate, port: int) -> list[object]:
    """What an app's ws:// client does through the proxy: a token in the query, a message, a ping, a close."""
    ws = WSConnection(ConnectionType.CLIENT)
    events: list[object] = []
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:

        def exchange(data: bytes, want: type) -> None:
            sock.sendall(data)
            while not any(isinstance(e, want) for e in events):
                chunk = sock.recv(65536)
                assert chunk, f"closed before {want.__name__}: {events}"
                ws.receive_data(chunk)
                events.extend(ws.events())

        target = f"http://ws.test:{port}/chat?token={SECRET}&room=7"
        exchange(ws.send(Request(host=f"ws.test:{port}", target=target)), AcceptConnection)
        exchange(ws.send(Message(data="hello")), TextMessage)
        exchange(ws.send(Ping(payload=f"ping {SECRET}".encode())), Pong)
        exchange(ws.send(CloseConnection(code=1000, reason=f"logout {SECRET}")), CloseConnection)
    return events


def raw_request(gate: Tlsgate, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return read_head(sock)


def h2_request_with_a_bad_header(gate: Tlsgate, port: int) -> None:
    """An HTTP/2 client (inside CONNECT and TLS) sending `authorization: ' Bearer <token>'`, which h2 refuses."""
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        sock.sendall(f"CONNECT api.test:{port} HTTP/1.1\r\nHost: api.test:{port}\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=str(gate.ca_cert))
        context.set_alpn_protocols(["h2"])
        with context.wrap_socket(sock, server_hostname="api.test") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            config = h2.config.H2Configuration(
                client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
            )
            conn = h2.connection.H2Connection(config)
            conn.initiate_connection()
            headers = [(":method", "GET"), (":scheme", "https"), (":authority", "api.test"), (":path", "/")]
            conn.send_headers(1, [*headers, ("authorization", f" Bearer {SECRET}")], end_stream=True)
            tls.sendall(conn.data_to_send())
            tls.settimeout(5)
            try:
                while data := tls.recv(65536):
                    if any(isinstance(e, h2.events.ConnectionTerminated) for e in conn.receive_data(data)):
                        break
            except (OSError, h2.exceptions.ProtocolError):
                pass


def sni_with_a_token(gate: Tlsgate, port: int) -> None:
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        target = f"api.test:{port}".encode()
        sock.sendall(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(evil_sni_hello(f"api.test?token={SECRET}".encode()))
        read_until_closed(sock)


@pytest.fixture
def h2_upstream(pki: tuple[object, Path, Path, Path]) -> Iterator[Upstream]:
    """An HTTPS upstream that picks h2 by ALPN, so tlsgate speaks HTTP/2 to the client (the request never gets here)."""
    _, _, cert_file, key_file = pki
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    server = Upstream("h2-upstream", ssl_context=context).start()
    yield server
    server.stop()


def test_no_mitmproxy_line_echoes_a_planted_token(tlsgate, ws_server: EchoWebSocketServer, h2_upstream: Upstream) -> None:
    https_upstream = h2_upstream
    gate = tlsgate(POLICY, resolve={"ws.test": ws_server.port, "api.test": https_upstream.port}, args=("-v",))

    events = websocket_session(gate, ws_server.port)
    assert ws_server.messages == ["hello"] and any(isinstance(e, Pong) for e in events)
    gate.wait_for(r"WebSocket connection closed by client: 1000 \(reason: 28 chars, not shown\)")
    assert gate.wait_for(rf"-> WebSocket text message -> 127\.0\.0\.1:{ws_server.port}/chat\?token=\[REDACTED\]&room=7")
    assert gate.wait_for(r"Received WebSocket ping from client \(payload: b'ping \[REDACTED\] \(21 chars\)'\)")

    answer = raw_request(
        gate, f"GET http://ws.test:{ws_server.port}/ HTTP/1.1\r\nHost: ws.test\r\nAuthorization Bearer {SECRET}\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 400")
    gate.wait_for(r"Invalid header line: b'Authorization \[REDACTED\] \(28 chars\)'")
    answer = raw_request(
        gate, f"GET http://ws.test:{ws_server.port}/ HTTP/1.1\r\nHost: ws.test\r\nContent-Length: {SECRET}\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 400")
    gate.wait_for(r"invalid content-length header: b'\[REDACTED\] \(21 chars\)'")

    h2_request_with_a_bad_header(gate, https_upstream.port)
    gate.wait_for(r"HTTP/2 protocol error: .*b' Bearer \[REDACTED\] \(21 chars\)'")
    sni_with_a_token(gate, https_upstream.port)
    gate.wait_for(r"client_ciphers api\.test\[REDACTED\] \(28 chars\):")  # the finding names the SNI up to the "?"

    scraped = gate.scrape()
    gate.stop()
    findings = gate.findings_path.read_text() if gate.findings_path.exists() else ""
    for place, text in (("console", gate.output), ("findings", findings), ("metrics", scraped)):
        assert SECRET.lower() not in text.lower(), f"the planted token reached the {place}:\n" + "\n".join(
            line for line in text.splitlines() if SECRET.lower() in line.lower()
        )
