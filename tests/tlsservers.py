"""Upstreams with one TLS property dialled in: protocol version, suite, certificate chain.

OpenSSL here no longer implements RC4, 3DES or NULL suites, so servers that
speak only those run on tlslite-ng (pure Python), which still does.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.certgen import Issued, write_server_files
from tests.harness import Upstream

VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


def tls_upstream(
    directory: Path,
    leaf: Issued,
    *chain: Issued,
    version: str | None = None,
    ciphers: str | None = None,
    name: str = "https-upstream",
) -> Upstream:
    """An HTTPS Upstream serving `leaf` (+ chain), optionally pinned to one version / cipher string."""
    cert_file, key_file = write_server_files(directory, leaf, *chain, name=name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Security level 0 first, or OpenSSL refuses to even load a weak key, and old versions need it too.
    context.set_ciphers(f"{ciphers or 'DEFAULT'}:@SECLEVEL=0")
    context.load_cert_chain(cert_file, key_file)
    if version:
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: serving them is the point here
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = context.maximum_version = VERSIONS[version]
    return Upstream(name, ssl_context=context).start()


def serve_on_loopback(handle: Callable[[socket.socket], None], threaded: bool = False) -> socket.socket:
    """A listening socket on 127.0.0.1 handing each accepted connection to `handle` until it is closed."""
    listener = socket.create_server(("127.0.0.1", 0))

    def accept_forever() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if threaded:
                threading.Thread(target=handle, args=(client,), daemon=True).start()
            else:
                handle(client)

    threading.Thread(target=accept_forever, daemon=True).start()
    return listener


@dataclass
class RawTlsServer:
    """A TLS server speaking no HTTP: records every byte it receives and echoes it."""

    cert_file: Path
    key_file: Path
    received: list[bytes] = field(default_factory=list)
    port: int = 0

    def start(self) -> RawTlsServer:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(self.cert_file, self.key_file)
        self._sock = serve_on_loopback(self._echo, threaded=True)
        self.port = self._sock.getsockname()[1]
        return self

    def _echo(self, client: socket.socket) -> None:
        try:
            with self._context.wrap_socket(client, server_side=True) as tls:
                while data := tls.recv(4096):
                    self.received.append(data)
                    tls.sendall(b"echo:" + data)
        except (ssl.SSLError, OSError):
            pass  # tlsgate hanging up on us is the expected outcome for a probe

    def stop(self) -> None:
        self._sock.close()


@dataclass
class TlsliteServer:
    """A TLS 1.2 server that offers only the given tlslite cipher names (e.g. ["3des"], ["rc4"], ["null"])."""

    leaf: Issued
    chain: tuple[Issued, ...]
    cipher_names: list[str]
    port: int = 0
    handshakes: int = 0
    errors: list[str] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)

    def start(self) -> TlsliteServer:
        from tlslite import HandshakeSettings, X509CertChain, parsePEMKey

        pem = b"".join(item.cert_pem for item in (self.leaf, *self.chain)).decode()
        self._cert_chain = X509CertChain()
        self._cert_chain.parsePemList(pem)
        self._key = parsePEMKey(self.leaf.key_pem.decode(), private=True, implementations=["python"])
        settings = HandshakeSettings()
        settings.cipherNames = list(self.cipher_names)
        settings.macNames = ["sha", "md5", "sha256"]
        settings.keyExchangeNames = ["rsa", "ecdhe_rsa", "dhe_rsa"]
        settings.minVersion = (3, 1)
        settings.maxVersion = (3, 3)
        self._settings = settings
        self._sock = serve_on_loopback(self._handshake)
        self.port = self._sock.getsockname()[1]
        return self

    def _handshake(self, client: socket.socket) -> None:
        from tlslite import TLSConnection

        self.handshakes += 1
        conn = TLSConnection(client)
        try:
            conn.handshakeServer(certChain=self._cert_chain, privateKey=self._key, settings=self._settings)
            self.requests.append(conn.recv(65536))
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        except Exception as exc:  # the proxy refusing us is the expected outcome
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()

    def stop(self) -> None:
        self._sock.close()


class GrpcServer:
    """A real grpcio server over TLS (ALPN h2) with one generic service on raw bytes: it records every request
    message that reached it and answers with a small message of its own (`Chat`, bidirectional: an echo of
    each message as it arrives). No .proto is compiled: the tests
    build protobuf wire bytes themselves (`tlsgate.payload.grpc.encode`)."""

    SERVICE = "demo.Sync"

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        import concurrent.futures

        import grpc

        self.received: list[tuple[str, bytes]] = []
        self.metadata: list[dict[str, str]] = []

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.received.append(("Push", request))
            self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
            return b"\x08\x01"  # {1: 1}

        def client_stream(requests: Any, context: grpc.ServicerContext) -> bytes:
            for request in requests:
                self.received.append(("Upload", request))
            return b"\x08\x02"

        def bidi(requests: Any, context: grpc.ServicerContext) -> Any:
            """Each message recorded, and echoed at once with its index (`{1: index, 2: message}`)."""
            for index, request in enumerate(requests):
                self.received.append(("Chat", request))
                yield b"\x08" + bytes([index & 0x7F]) + b"\x12" + bytes([len(request) & 0x7F]) + request[:127]

        handler = grpc.method_handlers_generic_handler(
            self.SERVICE,
            {
                "Push": grpc.unary_unary_rpc_method_handler(unary),
                "Upload": grpc.stream_unary_rpc_method_handler(client_stream),
                "Chat": grpc.stream_stream_rpc_method_handler(bidi),
            },
        )
        self._server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers((handler,))
        credentials = grpc.ssl_server_credentials([(key_file.read_bytes(), cert_file.read_bytes())])
        self.port = self._server.add_secure_port("127.0.0.1:0", credentials)

    def start(self) -> GrpcServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)


class NginxH2:
    """nginx serving HTTPS with HTTP/2 (`listen ... ssl http2`), answering every request `200 ok` and logging
    each request line it received, so a test can say what reached it. h2c (cleartext HTTP/2 by prior
    knowledge) with `h2c=True`."""

    def __init__(self, directory: Path, cert_file: Path, key_file: Path, h2c: bool = False) -> None:
        import socket as _socket

        self.directory = directory
        self.log = directory / "access.log"
        with _socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        listen = f"listen 127.0.0.1:{self.port} http2;" if h2c else f"listen 127.0.0.1:{self.port} ssl http2;"
        tls = "" if h2c else f"ssl_certificate {cert_file}; ssl_certificate_key {key_file};"
        (directory / "nginx.conf").write_text(
            f"worker_processes 1; pid {directory}/nginx.pid; error_log {directory}/error.log;\n"
            "events { worker_connections 64; }\n"
            "http {\n"
            f"  client_body_temp_path {directory}/body; proxy_temp_path {directory}/proxy;\n"
            f"  fastcgi_temp_path {directory}/fcgi; uwsgi_temp_path {directory}/uwsgi; scgi_temp_path {directory}/scgi;\n"
            f"  log_format plain '$request $server_protocol'; access_log {self.log} plain;\n"
            f"  server {{ {listen} {tls} location / {{ return 200 'ok\\n'; }} }}\n"
            "}\n"
        )
        self._proc: Any = None

    def start(self) -> NginxH2:
        import subprocess
        import time

        self._proc = subprocess.Popen(
            ["nginx", "-p", str(self.directory), "-c", str(self.directory / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nginx did not listen: {(self.directory / 'error.log').read_text()}")

    def requests(self) -> list[str]:
        """Each request line nginx received, with its protocol: "POST /path HTTP/2.0 HTTP/2.0"."""
        return self.log.read_text().splitlines() if self.log.exists() else []

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)


@dataclass
class ReceivedBody:
    """One request as a `BodyRecorder` got it: the body bytes that arrived (de-chunked), and how it ended."""

    path: str
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False  # the body's end arrived (HTTP/1 length or last chunk; HTTP/2 END_STREAM)
    reset: bool = False  # HTTP/2: the proxy reset the stream
    closed: bool = False  # the connection closed before the body ended
    head_at: float = field(default_factory=time.monotonic)  # when the head arrived
    first_byte_at: float | None = None  # when the first body byte arrived (benchmarks: what holding delays)


@dataclass
class BodyRecorder:
    """An HTTPS upstream (HTTP/1.1 or, with `h2`, HTTP/2 by ALPN) that records exactly which body bytes of each
    request reached it, and answers a complete request with the SHA-256 and length of what it got."""

    cert_file: Path
    key_file: Path
    h2: bool = False
    received: list[ReceivedBody] = field(default_factory=list)
    port: int = 0

    def start(self) -> BodyRecorder:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(self.cert_file, self.key_file)
        self._context.set_alpn_protocols(["h2"] if self.h2 else ["http/1.1"])
        self._sock = serve_on_loopback(self._serve_h2 if self.h2 else self._serve_h1, threaded=True)
        self.port = self._sock.getsockname()[1]
        return self

    def stop(self) -> None:
        self._sock.close()

    def completed(self) -> list[ReceivedBody]:
        return [seen for seen in self.received if seen.complete]

    @staticmethod
    def answer(seen: ReceivedBody) -> bytes:
        import hashlib
        import json

        return json.dumps({"sha256": hashlib.sha256(seen.body).hexdigest(), "length": len(seen.body)}).encode()

    def _serve_h1(self, conn: socket.socket) -> None:
        import contextlib

        with contextlib.suppress(OSError, ssl.SSLError), conn, self._context.wrap_socket(conn, server_side=True) as channel:
            buffer = bytearray()
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = channel.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                seen = ReceivedBody(lines[0].split()[1], headers)
                self.received.append(seen)
                buffer = bytearray(rest)
                if not self._h1_body(channel, seen, buffer):
                    seen.closed = True
                    return
                seen.complete = True
                payload = self.answer(seen)
                channel.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(payload), payload))  # fmt: skip

    @staticmethod
    def _h1_body(channel: ssl.SSLSocket, seen: ReceivedBody, buffer: bytearray) -> bool:
        """Read the body into `seen.body` as it arrives; False if the connection closed first."""

        def more() -> bool:
            data = channel.recv(65536)
            buffer.extend(data)
            if len(buffer) > 64 and seen.first_byte_at is None:  # past a chunk-size line: body bytes
                seen.first_byte_at = time.monotonic()
            return bool(data)

        if "chunked" in seen.headers.get("transfer-encoding", "").lower():
            while True:
                while b"\r\n" not in buffer:
                    if not more():
                        return False
                line, _, _ = bytes(buffer).partition(b"\r\n")
                size = int(line.split(b";")[0], 16)
                while len(buffer) < len(line) + 2 + size + 2:
                    if not more():
                        seen.body += buffer[len(line) + 2 : len(line) + 2 + size]  # what came of the chunk
                        return False
                seen.body += buffer[len(line) + 2 : len(line) + 2 + size]
                del buffer[: len(line) + 2 + size + 2]
                if size == 0:
                    return True
        length = int(seen.headers.get("content-length", "0"))
        while len(seen.body) + len(buffer) < length:
            seen.body += buffer
            buffer.clear()
            if not more():
                seen.body += buffer
                return False
        seen.body += buffer[: length - len(seen.body)]
        del buffer[:]
        return True

    def _serve_h2(self, conn: socket.socket) -> None:
        import contextlib

        import h2.config
        import h2.connection
        import h2.events

        with contextlib.suppress(OSError, ssl.SSLError), conn, self._context.wrap_socket(conn, server_side=True) as channel:
            peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            peer.initiate_connection()
            channel.sendall(peer.data_to_send())
            streams: dict[int, ReceivedBody] = {}
            while True:
                data = channel.recv(65536)
                if not data:
                    for seen in streams.values():
                        seen.closed = not seen.complete and not seen.reset
                    return
                for event in peer.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = {k.decode().lower(): v.decode() for k, v in event.headers or []}
                        seen = streams[event.stream_id] = ReceivedBody(headers.get(":path", "/"), headers)
                        self.received.append(seen)
                    elif isinstance(event, h2.events.DataReceived):
                        seen = streams[event.stream_id]
                        seen.first_byte_at = seen.first_byte_at or time.monotonic()
                        seen.body += event.data
                        peer.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        seen = streams[event.stream_id]
                        seen.complete = True
                        payload = self.answer(seen)
                        peer.send_headers(event.stream_id, [(":status", "200"), ("content-length", str(len(payload)))])
                        peer.send_data(event.stream_id, payload, end_stream=True)
                    elif isinstance(event, h2.events.StreamReset) and event.stream_id in streams:
                        streams[event.stream_id].reset = True
                if out := peer.data_to_send():
                    channel.sendall(out)
