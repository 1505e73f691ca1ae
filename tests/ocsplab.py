"""OCSP responses and stapling servers for tests: a test CA that also answers for its certificates.

Responses are built with cryptography's `OCSPResponseBuilder`, signed by the
issuing CA or by a delegated responder certificate it issued, so every case
(good, revoked, unknown, expired, not yet valid, wrong certificate, wrong
signer, tampered) is a real, DER-encoded response a server can staple.

Two stapling servers:

- `StaplingServer`: pyOpenSSL over a socket, stapling the bytes it is given
  (or nothing), answering HTTP/1.1 and recording every byte received after
  the handshake, so "not one request byte reached the server" is checkable.
- `s_server`: OpenSSL's own `openssl s_server -status_file`, the lab server
  operators know.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL

from tests.certgen import DEFAULT_KEY, Issued, PrivateKey, _base_builder, _name, _sign, utcnow, write_pem, write_server_files
from tests.harness import eventually, free_port
from tests.tlsservers import serve_on_loopback

_HASHES: dict[str, hashes.HashAlgorithm] = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384()}
_STATUS = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED, "unknown": ocsp.OCSPCertStatus.UNKNOWN}


def make_responder(
    issuer: Issued,
    *,
    ocsp_signing: bool = True,
    key: str | PrivateKey = DEFAULT_KEY,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    cn: str = "tlsgate test OCSP responder",
) -> Issued:
    """A delegated OCSP responder certificate issued by `issuer` (id-kp-OCSPSigning unless `ocsp_signing=False`)."""
    from tests.certgen import make_key

    private = make_key(key)
    window = (not_before or utcnow() - dt.timedelta(days=1), not_after or utcnow() + dt.timedelta(days=30))
    builder = _base_builder(_name(cn), private.public_key(), issuer, window).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    )
    purpose = ExtendedKeyUsageOID.OCSP_SIGNING if ocsp_signing else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    return Issued(_sign(builder, issuer.key, "sha256"), private)


def ocsp_response(
    leaf: Issued | x509.Certificate,
    issuer: Issued | x509.Certificate,
    *,
    status: str = "good",
    signer: Issued | None = None,
    carry: Sequence[x509.Certificate] = (),
    this_update: dt.datetime | None = None,
    next_update: dt.datetime | None | bool = True,
    revoked_at: dt.datetime | None = None,
    reason: x509.ReasonFlags | None = None,
    cert_id_hash: str = "sha1",
    by: str = "hash",
    digest: str | None = "sha256",
) -> bytes:
    """A DER OCSP response about `leaf`; signed by `signer` (default: `issuer`, which must then be an Issued).

    `next_update=True` means a day after thisUpdate, None or False leaves it out.
    `carry` is the certificates the response includes (a delegated responder carries its own).
    """
    leaf_cert = leaf.cert if isinstance(leaf, Issued) else leaf
    issuer_cert = issuer.cert if isinstance(issuer, Issued) else issuer
    if signer is None:
        assert isinstance(issuer, Issued), "give the signer when the issuer's key is not at hand"
        signer = issuer
    now = utcnow()
    this = this_update or now - dt.timedelta(hours=1)
    following = this + dt.timedelta(days=1) if next_update is True else next_update or None
    revoked = status == "revoked"
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=leaf_cert,
        issuer=issuer_cert,
        algorithm=_HASHES[cert_id_hash],
        cert_status=_STATUS[status],
        this_update=this,
        next_update=following,
        revocation_time=(revoked_at or now - dt.timedelta(days=2)) if revoked else None,
        revocation_reason=reason if revoked else None,
    )
    encoding = ocsp.OCSPResponderEncoding.HASH if by == "hash" else ocsp.OCSPResponderEncoding.NAME
    builder = builder.responder_id(encoding, signer.cert)
    if carry:
        builder = builder.certificates(list(carry))
    algorithm = _HASHES[digest] if digest else None  # None: EdDSA signs without a separate hash
    return builder.sign(signer.key, algorithm).public_bytes(serialization.Encoding.DER)


def unsuccessful(status: ocsp.OCSPResponseStatus = ocsp.OCSPResponseStatus.TRY_LATER) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


def tampered(response: bytes) -> bytes:
    """The same response with one bit of its signature flipped (the last byte of the DER is signature)."""
    return response[:-1] + bytes([response[-1] ^ 0x01])


@dataclass
class StaplingServer:
    """An HTTPS server on 127.0.0.1 that staples `staple` (b"": nothing) when asked, and records what it gets."""

    directory: Path
    leaf: Issued
    chain: tuple[Issued, ...]
    staple: bytes = b""
    tls_version: int | None = None  # SSL.TLS1_2_VERSION / TLS1_3_VERSION to pin one
    handshakes: int = 0
    status_requests: int = 0  # handshakes whose client asked for a stapled response
    received: list[bytes] = field(default_factory=list)  # application bytes, per connection that sent any
    errors: list[str] = field(default_factory=list)
    port: int = 0

    def start(self) -> StaplingServer:
        cert_file, key_file = write_server_files(self.directory, self.leaf, *self.chain, name="stapling")
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate_chain_file(str(cert_file))
        context.use_privatekey_file(str(key_file))
        if self.tls_version is not None:
            context.set_min_proto_version(self.tls_version)
            context.set_max_proto_version(self.tls_version)
        context.set_ocsp_server_callback(self._staple)
        self._context = context
        self._lock = threading.Lock()
        self._sock = serve_on_loopback(self._serve, threaded=True)
        self.port = self._sock.getsockname()[1]
        return self

    def _staple(self, conn: SSL.Connection, data: object) -> bytes:
        with self._lock:
            self.status_requests += 1
        return self.staple

    @property
    def requests(self) -> list[bytes]:
        return [data for data in self.received if data]

    def _serve(self, client: socket.socket) -> None:
        client.setblocking(True)  # pyOpenSSL over a socket with a timeout (non-blocking underneath) raises WantRead
        conn = SSL.Connection(self._context, client)
        conn.set_accept_state()
        got = b""
        try:
            conn.do_handshake()
            with self._lock:
                self.handshakes += 1
            while b"\r\n\r\n" not in got:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += chunk
            if got:
                body = b"hello from the stapling server\n"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
                conn.shutdown()
        except (SSL.Error, OSError) as exc:  # tlsgate refusing the handshake is the expected outcome of some cases
            with self._lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self.received.append(got)
            client.close()

    def stop(self) -> None:
        self._sock.close()


@contextlib.contextmanager
def s_server(
    directory: Path, leaf: Issued, chain: Sequence[Issued], staple: bytes | None, *, www: bool = True
) -> Iterator[tuple[int, list[str]]]:
    """`openssl s_server` stapling `staple` from `-status_file` (None: started without it, so it never staples).

    `www=True` answers each GET with OpenSSL's status page; `www=False` is its
    echo mode, which prints every application byte it receives: the lines are
    collected, so a test can assert that no request reached it.
    """
    cert_file, key_file = write_server_files(directory, leaf, name="s_server")
    chain_file = write_pem(directory / "s_server-chain.pem", *chain)
    port = free_port()
    command = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert_file), "-key", str(key_file)]
    command += ["-cert_chain", str(chain_file), "-naccept", "64"]
    if staple is not None:
        status = directory / "s_server-status.der"
        status.write_bytes(staple)
        command += ["-status_file", str(status)]
    command += ["-www"] if www else ["-ign_eof"]
    lines: list[str] = []
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        if not eventually(lambda: any("ACCEPT" in line for line in lines) or proc.poll() is not None, 20):
            raise AssertionError(f"openssl s_server did not start:\n{lines}")
        if proc.poll() is not None:
            raise AssertionError(f"openssl s_server exited ({proc.returncode}):\n" + "\n".join(lines))
        yield port, lines
    finally:
        proc.kill()
        proc.wait(10)
        reader.join(5)
