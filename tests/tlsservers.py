"""Upstreams with one TLS property dialled in: protocol version, suite, certificate chain.

OpenSSL here no longer implements RC4, 3DES or NULL suites, so servers that
speak only those run on tlslite-ng (pure Python), which still does.
"""

from __future__ import annotations

import socket
import ssl
import threading
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
    message that reached it and answers with a small message of its own. No .proto is compiled: the tests
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

        handler = grpc.method_handlers_generic_handler(
            self.SERVICE,
            {
                "Push": grpc.unary_unary_rpc_method_handler(unary),
                "Upload": grpc.stream_unary_rpc_method_handler(client_stream),
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
