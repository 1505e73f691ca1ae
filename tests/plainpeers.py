"""Cleartext peers for tests: recording servers (MQTT, SMTP with STARTTLS offered, raw) and the clients that talk to them.

Every server counts each byte it receives from clients, in memory and, with
`--record FILE`, in a JSON file rewritten after every read:
`{"connections": N, "bytes": N, "first": "<hex of the first 64 bytes received>"}`,
so a test outside this process (another network namespace, say) can assert
"the upstream received nothing".

Command line (stable: tests in network namespaces run these):

    python -m tests.plainpeers serve mqtt|smtp|raw --port P [--host H] [--record FILE] [--cert PEM --key PEM]
        Serve until killed; prints one JSON line {"listening": "H:P"} once bound.
        mqtt: answers a CONNECT with CONNACK (accepted). smtp: banner, EHLO offers
        STARTTLS and AUTH PLAIN, AUTH answers 235, other commands 250; STARTTLS is
        refused (454) unless --cert/--key are given: then it answers 220 and really
        upgrades (Python ssl on the accepted socket). raw: reads only.
        The record then also holds "tls_attempts", "tls_established" and "tls_bytes" (plaintext
        received after a completed handshake); `bytes`/`first` count only what came before TLS.

    python -m tests.plainpeers mqtt-connect HOST:PORT [--username U] [--password P] [VIA]
    python -m tests.plainpeers smtp-auth HOST:PORT [--username U] [--password P] [VIA]
    python -m tests.plainpeers smtp-starttls HOST:PORT --ca PEM|--insecure [--server-name N] [--username U] [--password P] [VIA]
    python -m tests.plainpeers raw HOST:PORT --hex BYTES [VIA]   (reads until the close or --timeout)
        VIA: nothing (direct, e.g. transparent/wireguard interception), or
        --connect-proxy H:P (HTTP CONNECT, tlsgate's regular mode), or --socks5 H:P.
        Prints one JSON line, the client's transcript: {"sent": n, "received": n,
        "closed": bool (the peer closed on us), "timeout": bool, "error": str|null, ...};
        mqtt-connect adds "connack" (accepted) and "connack_code"; smtp-auth adds "banner",
        "starttls_offered" and "authenticated"; smtp-starttls (EHLO, STARTTLS, a TLS handshake
        trusting only --ca, EHLO, AUTH PLAIN, QUIT) adds "starttls_accepted", "tls",
        "tls_error", "peer_issuer" and "after_tls" (the first reply read over TLS; --insecure: any certificate).
        and exits 0 whatever happened: the caller judges the transcript.

Every wait is bounded by `--timeout` (default 10 s).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import socket
import ssl
import struct
import sys
import threading
from pathlib import Path
from typing import Any, Self

MQTT_CONNACK = b"\x20\x02\x00\x00"
SMTP_BANNER = b"220 peer.test ESMTP plainpeers\r\n"
SMTP_EHLO_REPLY = b"250-peer.test\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"


# -- servers --------------------------------------------------------------------------------------


class ThreadedServer:
    """A TCP listener whose every connection is handled on a thread of its own (`_handle`), until `close`.

    The accept loop of every small recording server in the tests (here, and
    tests/live/test_fallback.py's line servers): it wakes twice a second to see
    whether it was closed, so a finished test leaves no thread behind for long.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.host, self.port = self.sock.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()

    def _serve(self) -> None:
        self.sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._accepted()
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _accepted(self) -> None:
        """A connection was accepted (on the accept loop's thread, before its handler starts)."""

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError


class RecordingServer(ThreadedServer):
    """A threaded TCP server for one protocol that records every byte clients send."""

    def __init__(
        self, kind: str, host: str = "127.0.0.1", port: int = 0, record: Path | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        if kind not in ("mqtt", "smtp", "raw"):
            raise ValueError(f"unknown peer kind {kind!r}")
        self.kind = kind
        self.record = record
        self.tls = tls  # smtp: STARTTLS really upgrades with this server context
        self.received = bytearray()  # before TLS
        self.received_tls = bytearray()  # plaintext received over TLS, after a completed handshake
        self.tls_attempts = 0  # STARTTLS accepted and a handshake started
        self.tls_established = 0
        self.connections = 0
        self.lock = threading.Lock()
        super().__init__(host, port)
        self._write()

    @property
    def bytes_received(self) -> int:
        with self.lock:
            return len(self.received)

    def _write(self) -> None:
        if self.record is None:
            return
        with self.lock:
            state = {
                "connections": self.connections,
                "bytes": len(self.received),
                "first": self.received[:64].hex(),
                "tls_attempts": self.tls_attempts,
                "tls_established": self.tls_established,
                "tls_bytes": len(self.received_tls),
            }
        tmp = self.record.with_suffix(self.record.suffix + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.record)

    def _accepted(self) -> None:
        with self.lock:
            self.connections += 1
        self._write()

    def _got(self, data: bytes, tls: bool = False) -> None:
        with self.lock:
            (self.received_tls if tls else self.received).extend(data)
        self._write()

    def _count(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)
        self._write()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            with conn:
                if self.kind == "smtp":
                    conn.sendall(SMTP_BANNER)
                buffer = b""
                for _ in range(10_000):
                    data = conn.recv(65536)
                    if not data:
                        return
                    self._got(data)
                    buffer += data
                    if self.kind == "mqtt" and buffer[:1] == b"\x10":
                        conn.sendall(MQTT_CONNACK)
                        buffer = b""
                    elif self.kind == "smtp":
                        while b"\n" in buffer:
                            line, buffer = buffer.split(b"\n", 1)
                            if self.tls is not None and line.strip().upper() == b"STARTTLS":
                                conn.sendall(b"220 2.0.0 Ready to start TLS\r\n")
                                self._serve_tls(conn)
                                return
                            conn.sendall(_smtp_reply(line.strip()))
        except OSError:
            return

    def _serve_tls(self, conn: socket.socket) -> None:
        """The rest of an SMTP session after an accepted STARTTLS: handshake, then commands over TLS, recorded apart."""
        assert self.tls is not None
        self._count("tls_attempts")
        try:
            secure = self.tls.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the handshake failed: nothing after it can have been received
        self._count("tls_established")
        with secure:
            buffer = b""
            for _ in range(10_000):
                data = secure.recv(65536)
                if not data:
                    return
                self._got(data, tls=True)
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    secure.sendall(_smtp_reply(line.strip()))


def _smtp_reply(line: bytes) -> bytes:
    command = line.split(b" ", 1)[0].upper()
    if command in (b"EHLO", b"LHLO"):
        return SMTP_EHLO_REPLY
    if command == b"AUTH":
        return b"235 2.7.0 Authentication successful\r\n"
    if command == b"STARTTLS":
        return b"454 4.7.0 TLS not available in this test peer\r\n"
    if command == b"QUIT":
        return b"221 bye\r\n"
    return b"250 ok\r\n"


# -- clients --------------------------------------------------------------------------------------


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _read_until(sock: socket.socket, marker: bytes, limit: int = 65536) -> bytes:
    """Byte by byte, so what the server sends right after the proxy's answer (a banner) stays unread for the caller."""
    data = b""
    while not data.endswith(marker) and len(data) < limit:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionAbortedError("closed by peer during proxy setup")
        data += chunk
    return data


def open_stream(target: str, connect_proxy: str | None = None, socks5: str | None = None, timeout: float = 10.0) -> socket.socket:
    """A TCP stream to `target` (HOST:PORT): direct, through an HTTP CONNECT proxy, or through SOCKS5 (no auth)."""
    host, port = _split(target)
    via = connect_proxy or socks5
    sock = socket.create_connection(_split(via) if via else (host, port), timeout=timeout)
    sock.settimeout(timeout)
    if connect_proxy:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = _read_until(sock, b"\r\n\r\n")
        if head.split(b" ", 2)[1:2] != [b"200"]:
            sock.close()
            raise ConnectionRefusedError(f"CONNECT refused: {head.split(b'\r\n', 1)[0]!r}")
    elif socks5:
        sock.sendall(b"\x05\x01\x00")
        if _recv_exact(sock, 2) != b"\x05\x00":
            raise ConnectionRefusedError("SOCKS5 method refused")
        name = host.encode()
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
        reply = _recv_exact(sock, 4)
        if reply[1] != 0:
            raise ConnectionRefusedError(f"SOCKS5 connect failed: {reply[1]}")
        rest = {1: 4, 4: 16}.get(reply[3])
        _recv_exact(sock, (rest if rest is not None else _recv_exact(sock, 1)[0]) + 2)
    return sock


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionAbortedError("closed by peer during proxy setup")
        data += chunk
    return data


def mqtt_connect_packet(client_id: str = "plainpeers", username: str | None = None, password: str | None = None) -> bytes:
    """An MQTT 3.1.1 CONNECT, with the user name and password flags set when given."""

    def string(value: str) -> bytes:
        raw = value.encode()
        return struct.pack(">H", len(raw)) + raw

    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    variable = string("MQTT") + bytes([4, flags]) + struct.pack(">H", 60)
    payload = string(client_id) + (string(username) if username is not None else b"")
    payload += string(password) if password is not None else b""
    body = variable + payload
    length, encoded = len(body), b""
    while True:
        byte, length = length % 128, length // 128
        encoded += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    return b"\x10" + encoded + body


class Transcript:
    """What a client saw: bytes each way, whether the peer closed on it, and whether a wait ran out."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = b""
        self.closed = False
        self.timeout = False
        self.error: str | None = None
        self.extra: dict[str, Any] = {}

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "received": len(self.received),
            "received_head": self.received[:200].decode("latin-1"),
            "closed": self.closed,
            "timeout": self.timeout,
            "error": self.error,
            **self.extra,
        }

    def send(self, sock: socket.socket, data: bytes) -> bool:
        try:
            sock.sendall(data)
        except OSError as exc:
            self.closed, self.error = True, f"send: {exc}"
            return False
        self.sent += len(data)
        return True

    def read(self, sock: socket.socket, until: bytes | None = None, minimum: int = 1) -> bytes:
        """Read one reply (up to `until`, or at least `minimum` bytes); notes a close or a timeout."""
        got = b""
        for _ in range(1000):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                self.timeout = True
                break
            except OSError as exc:
                self.closed, self.error = True, f"recv: {exc}"
                break
            if not chunk:
                self.closed = True
                break
            got += chunk
            if (until is not None and until in got) or (until is None and len(got) >= minimum):
                break
        self.received += got
        return got


def _connect(transcript: Transcript, target: str, via: dict[str, Any]) -> socket.socket | None:
    try:
        return open_stream(target, **via)
    except OSError as exc:
        transcript.closed, transcript.error = True, f"connect: {exc}"
        return None


def mqtt_connect(target: str, username: str | None = None, password: str | None = None, **via: Any) -> Transcript:
    """Send an MQTT CONNECT and wait for the CONNACK (or the close)."""
    transcript = Transcript()
    sock = _connect(transcript, target, via)
    if sock is None:
        return transcript
    with sock:
        if transcript.send(sock, mqtt_connect_packet(username=username, password=password)):
            reply = transcript.read(sock, minimum=4)
            transcript.extra["connack"] = reply[:4] == MQTT_CONNACK
            transcript.extra["connack_code"] = reply[3] if len(reply) >= 4 and reply[0] == 0x20 else None
            if transcript.closed or transcript.timeout:
                return transcript
            if transcript.extra["connack"]:
                transcript.send(sock, b"\xe0\x00")  # DISCONNECT
            else:
                transcript.read(sock)  # refused: the broker (or a proxy) closes next
    return transcript


def smtp_auth(target: str, username: str = "user", password: str = "secret", **via: Any) -> Transcript:
    """Read the banner, EHLO, then AUTH PLAIN in the clear (ignoring the STARTTLS offered), then QUIT."""
    transcript = Transcript()
    sock = _connect(transcript, target, via)
    if sock is None:
        return transcript
    with sock:
        banner = transcript.read(sock, until=b"\n")
        transcript.extra["banner"] = banner.startswith(b"220")
        if transcript.closed or not transcript.send(sock, b"EHLO client.test\r\n"):
            return transcript
        ehlo = transcript.read(sock, until=b"250 ")
        transcript.extra["starttls_offered"] = b"STARTTLS" in ehlo
        if transcript.closed:
            return transcript
        plain = base64.b64encode(b"\x00" + username.encode() + b"\x00" + password.encode())
        if not transcript.send(sock, b"AUTH PLAIN " + plain + b"\r\n"):
            return transcript
        transcript.extra["authenticated"] = transcript.read(sock, until=b"\n").startswith(b"235")
        if not transcript.closed and transcript.send(sock, b"QUIT\r\n"):
            transcript.read(sock, until=b"\n")
    return transcript


def smtp_starttls(
    target: str,
    ca: Path | str | None,
    server_name: str | None = None,
    username: str = "user",
    password: str = "secret",
    **via: Any,
) -> Transcript:
    """EHLO, STARTTLS, a TLS handshake trusting only `ca` (verifying `server_name`), EHLO and AUTH PLAIN over TLS, QUIT.

    `ca=None` is an app that verifies nothing: it accepts any certificate.
    """
    transcript = Transcript()
    transcript.extra.update(starttls_accepted=False, tls=False, tls_error=None, peer_issuer=None, after_tls="")
    sock = _connect(transcript, target, via)
    if sock is None:
        return transcript
    name = server_name or _split(target)[0]
    with sock:
        transcript.extra["banner"] = transcript.read(sock, until=b"\n").startswith(b"220")
        if transcript.closed or not transcript.send(sock, b"EHLO client.test\r\n"):
            return transcript
        transcript.extra["starttls_offered"] = b"STARTTLS" in transcript.read(sock, until=b"250 ")
        if transcript.closed or not transcript.send(sock, b"STARTTLS\r\n"):
            return transcript
        reply = transcript.read(sock, until=b"\n")
        transcript.extra["starttls_accepted"] = reply.startswith(b"220")
        if not transcript.extra["starttls_accepted"]:
            return transcript
        context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
        if ca is None:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            secure = context.wrap_socket(sock, server_hostname=name)
        except (ssl.SSLError, OSError) as exc:
            transcript.closed, transcript.extra["tls_error"] = True, str(exc)[:200]
            return transcript
        transcript.extra["tls"] = True
        issuer = dict(x[0] for x in (secure.getpeercert() or {}).get("issuer", ()))  # empty when nothing was verified
        transcript.extra["peer_issuer"] = issuer.get("organizationName") or issuer.get("commonName")
        with secure:
            if not transcript.send(secure, b"EHLO client.test\r\n"):
                return transcript
            first = transcript.read(secure, until=b"250 ")  # the whole EHLO reply, or a refusal and the close
            transcript.extra["after_tls"] = first[:200].decode("latin-1")
            if transcript.closed or b"250 " not in first:
                return transcript
            plain = base64.b64encode(b"\x00" + username.encode() + b"\x00" + password.encode())
            if transcript.closed or not transcript.send(secure, b"AUTH PLAIN " + plain + b"\r\n"):
                return transcript
            transcript.extra["authenticated"] = transcript.read(secure, until=b"\n").startswith(b"235")
            if not transcript.closed and transcript.send(secure, b"QUIT\r\n"):
                transcript.read(secure, until=b"\n")
    return transcript


def raw_exchange(target: str, data: bytes, **via: Any) -> Transcript:
    """Send `data` and read everything back until the peer closes (`closed`) or the wait runs out (`timeout`)."""
    transcript = Transcript()
    sock = _connect(transcript, target, via)
    if sock is None:
        return transcript
    with sock:
        if transcript.send(sock, data):
            for _ in range(64):
                if not transcript.read(sock) or transcript.closed or transcript.timeout:
                    break
    return transcript


# -- command line ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.plainpeers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("kind", choices=("mqtt", "smtp", "raw"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--record", type=Path)
    serve.add_argument("--cert", type=Path, help="smtp: certificate chain PEM; STARTTLS then really upgrades")
    serve.add_argument("--key", type=Path, help="smtp: the certificate's key PEM")
    for name in ("mqtt-connect", "smtp-auth", "smtp-starttls", "raw"):
        client = sub.add_parser(name)
        client.add_argument("target", help="HOST:PORT")
        client.add_argument("--connect-proxy", help="HOST:PORT of an HTTP CONNECT proxy")
        client.add_argument("--socks5", help="HOST:PORT of a SOCKS5 proxy")
        client.add_argument("--timeout", type=float, default=10.0)
        if name == "raw":
            client.add_argument("--hex", required=True)
        else:
            if name == "smtp-starttls":
                trust = client.add_mutually_exclusive_group(required=True)
                trust.add_argument("--ca", type=Path, help="the only CA trusted for the TLS handshake")
                trust.add_argument("--insecure", action="store_true", help="accept any certificate (an app that does not verify)")
                client.add_argument("--server-name", help="name to verify (and send as SNI); default: HOST")
            client.add_argument("--username")
            client.add_argument("--password")
    args = parser.parse_args(argv)
    if args.command == "serve":
        tls = None
        if args.cert is not None:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(args.cert, args.key)
        server = RecordingServer(args.kind, args.host, args.port, args.record, tls=tls)
        print(json.dumps({"listening": f"{server.host}:{server.port}"}), flush=True)
        server.start()
        try:
            server._thread.join()
        except KeyboardInterrupt:
            server.close()
        return 0
    via = {"connect_proxy": args.connect_proxy, "socks5": args.socks5, "timeout": args.timeout}
    if args.command == "mqtt-connect":
        transcript = mqtt_connect(args.target, args.username, args.password, **via)
    elif args.command == "smtp-auth":
        transcript = smtp_auth(args.target, args.username or "user", args.password or "secret", **via)
    elif args.command == "smtp-starttls":
        user, password = args.username or "user", args.password or "secret"
        transcript = smtp_starttls(args.target, args.ca, args.server_name, user, password, **via)
    else:
        transcript = raw_exchange(args.target, bytes.fromhex(args.hex), **via)
    print(json.dumps(transcript.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
