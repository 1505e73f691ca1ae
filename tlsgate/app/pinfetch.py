"""Fetch a server's certificate chain the way tlsgate's upstream side sees it, for `tlsgate pin`.

Uses the same trust (public roots plus --upstream-ca) and the same name
override (--resolve) as `tlsgate run`, so the pins printed are the pins the
proxy will check.
"""

from __future__ import annotations

import select
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL

from tlsgate.addons.mitm_internals import verify_error_text, verify_host, verify_result
from tlsgate.tls.trust import build_bundle, read_roots


@dataclass
class Fetched:
    chain: list[x509.Certificate]
    verified: bool
    error: str | None


def fetch_chain(host: str, port: int, address: str | None, extra_roots: list[Path], timeout: float = 10) -> Fetched:
    """An inspection command writes nothing: the trust bundle lives in a temporary directory for the handshake."""
    with tempfile.TemporaryDirectory(prefix="tlsgate-pin-") as scratch:
        bundle = Path(scratch) / "upstream-trust.pem"
        build_bundle(extra_roots, bundle)
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.load_verify_locations(str(bundle))
        failures: list[int] = []

        def record(conn: SSL.Connection, cert: object, errno: int, depth: int, ok: int) -> bool:
            if not ok:
                failures.append(errno)
            return True  # record, don't abort: a tester pins staging servers too, and is told it did not verify

        context.set_verify(SSL.VERIFY_PEER, record)
        sock = socket.create_connection((address or host, port), timeout=timeout)
        try:
            conn = SSL.Connection(context, sock)
            verify_host(conn, host)
            conn.set_connect_state()
            _handshake(conn, sock, timeout)
            code = failures[0] if failures else verify_result(conn)
            verified = code == 0
            raw = conn.get_verified_chain() if verified else conn.get_peer_cert_chain()
            chain = [c.to_cryptography() for c in raw or []]
            error = None
            if not verified:
                error = f"certificate did not verify: {verify_error_text(code)}"
            conn.shutdown()
            return Fetched(chain, verified, error)
        finally:
            sock.close()


def _handshake(conn: SSL.Connection, sock: socket.socket, timeout: float) -> None:
    """pyOpenSSL on a socket with a timeout is non-blocking underneath: wait for each read ourselves."""
    while True:
        try:
            conn.do_handshake()
            return
        except SSL.WantReadError:
            if not select.select([sock], [], [], timeout)[0]:
                raise TimeoutError(f"no TLS answer within {timeout:.0f}s") from None


def load_files(paths: list[Path]) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for path in paths:
        certs.extend(read_roots(path))
    return certs
