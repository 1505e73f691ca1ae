"""Real WebSocket peers on wsproto and plain sockets: a server that records every message it receives, and a
client that reaches it through tlsgate (HTTP CONNECT, then TLS with tlsgate's CA, or cleartext ws://)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Request,
    TextMessage,
)

from tests.harness import read_head
from tests.tlsservers import serve_on_loopback


@dataclass
class WsServer:
    """Accepts WebSocket upgrades (TLS when given a context); records whole messages; answers each with `reply`
    when set. `closes` holds the (code, reason) of every close frame a client sent."""

    ssl_context: ssl.SSLContext | None = None
    reply: str | bytes | None = None
    received: list[str | bytes] = field(default_factory=list)
    closes: list[tuple[int, str]] = field(default_factory=list)
    port: int = 0

    def start(self) -> WsServer:
        self._listener = serve_on_loopback(self._serve, threaded=True)
        self.port = self._listener.getsockname()[1]
        return self

    def stop(self) -> None:
        self._listener.close()

    def _serve(self, raw: socket.socket) -> None:
        sock: socket.socket = raw
        try:
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(raw, server_side=True)
            sock.settimeout(20)
            ws = WSConnection(ConnectionType.SERVER)
            parts: list[str | bytes] = []
            while True:
                data = sock.recv(65536)
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, Request):
                        sock.sendall(ws.send(AcceptConnection()))
                    elif isinstance(event, Message):
                        parts.append(event.data)
                        if event.message_finished:
                            whole = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)  # type: ignore[arg-type]
                            parts = []
                            self.received.append(whole)
                            if self.reply is not None:
                                sock.sendall(
                                    ws.send(TextMessage(self.reply) if isinstance(self.reply, str) else BytesMessage(self.reply))
                                )
                    elif isinstance(event, Ping):
                        sock.sendall(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        self.closes.append((event.code, event.reason or ""))
                        return
                if not data:
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            sock.close()


class WsClient:
    """A WebSocket client through tlsgate as its HTTP proxy."""

    def __init__(self, proxy_port: int, host: str, ca_file: Path | None, port: int = 443, path: str = "/ws") -> None:
        raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=20)
        if ca_file is not None:
            raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            head = read_head(raw)
            assert head.startswith(b"HTTP/1.1 200"), head
            context = ssl.create_default_context(cafile=str(ca_file))
            self.sock: socket.socket = context.wrap_socket(raw, server_hostname=host)
            target = path
        else:
            self.sock = raw
            target = f"http://{host}:{port}{path}"  # a plain HTTP proxy request: the absolute form
        self.sock.settimeout(20)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Event] = []
        self.sock.sendall(self.ws.send(Request(host=host, target=target)))
        self.upgraded = self._wait(lambda e: isinstance(e, AcceptConnection | CloseConnection)) is not None and any(
            isinstance(e, AcceptConnection) for e in self.events
        )

    def send(self, message: str | bytes, fragments: int = 1) -> None:
        """One message, in `fragments` frames."""
        step = max(1, -(-len(message) // fragments))
        pieces = [message[i : i + step] for i in range(0, len(message), step)] or [message]
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            event = (
                TextMessage(piece, message_finished=last)
                if isinstance(piece, str)
                else BytesMessage(piece, message_finished=last)
            )
            self.sock.sendall(self.ws.send(event))

    def _wait(self, done: object, timeout: float = 20) -> Event | None:
        check = done
        self.sock.settimeout(timeout)
        while True:
            for event in self.events:
                if check(event):  # type: ignore[operator]
                    return event
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError):
                return None
            try:
                self.ws.receive_data(data or None)
                self.events += list(self.ws.events())
            except Exception:  # noqa: BLE001 - a peer's protocol error ends the wait like a close
                return None
            if not data:
                for event in self.events:
                    if check(event):  # type: ignore[operator]
                        return event
                return None

    def close_seen(self, timeout: float = 20) -> CloseConnection | None:
        event = self._wait(lambda e: isinstance(e, CloseConnection), timeout)
        return event if isinstance(event, CloseConnection) else None

    def messages(self, count: int, timeout: float = 20) -> list[str | bytes]:
        self._wait(lambda e: sum(isinstance(x, Message) for x in self.events) >= count, timeout)
        return [e.data for e in self.events if isinstance(e, Message)]

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already closed by the other side
            self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        self.sock.close()


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


def wait_received(server: WsServer, count: int, timeout: float = 10) -> bool:
    done = threading.Event()
    for _ in range(int(timeout * 20)):
        if len(server.received) >= count:
            return True
        done.wait(0.05)
    return len(server.received) >= count
