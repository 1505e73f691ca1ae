"""Certificate Transparency for tests: test logs with real keys, SCTs they really sign, leaves that embed them.

A CA embeds SCTs the way RFC 6962 §3.1 describes: it builds the certificate,
has each log sign that TBSCertificate (without any SCT extension) bound to
the issuer's key hash, then adds the SCT list as one more extension and signs
the final certificate. `leaf_with_scts` does exactly that and asserts that the
final certificate's `tbs_precertificate_bytes` is what the logs signed, so a
test never passes on a leaf built differently from a real one.

Typical use::

    argon, nimbus = TestLog("Argon", "Google"), TestLog("Nimbus", "Cloudflare")
    leaf = leaf_with_scts(chain.intermediate, ("api.test",), [argon, nimbus])
    (tmp_path / "logs.json").write_bytes(log_list_json([argon, nimbus]))
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from tests.certgen import Issued, _base_builder, _name, _san, make_key, utcnow

SCT_LIST_OID = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")


@dataclass
class TestLog:
    """A CT log of our own: its key signs SCTs; `entry()` is how a v3 log list describes it."""

    name: str
    operator: str
    key_spec: str = "ec:P-256"
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = field(init=False)

    __test__ = False  # not a pytest class

    def __post_init__(self) -> None:
        self.key = make_key(self.key_spec)  # type: ignore[assignment]

    @property
    def spki(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def log_id(self) -> bytes:
        return hashlib.sha256(self.spki).digest()

    def entry(self, state: str = "usable", since: dt.datetime | None = None) -> dict[str, Any]:
        when = (since or dt.datetime(2024, 1, 1, tzinfo=dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "description": f"Test '{self.name}' log",
            "log_id": base64.b64encode(self.log_id).decode(),
            "key": base64.b64encode(self.spki).decode(),
            "url": f"https://ct.invalid/{self.name.lower()}/",
            "mmd": 86400,
            "state": {state: {"timestamp": when}},
        }

    def sign(self, data: bytes) -> tuple[int, bytes]:
        """(signature algorithm number, signature) over `data` with SHA-256, as RFC 6962 logs sign."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return 1, self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return 3, self.key.sign(data, ec.ECDSA(hashes.SHA256()))


def log_list_json(
    logs: Sequence[TestLog],
    published: dt.datetime | None = None,
    states: dict[str, tuple[str, dt.datetime]] | None = None,
) -> bytes:
    """A v3 log list naming `logs`, grouped by operator; `states` overrides one log's (state, since) by name."""
    operators: dict[str, list[dict[str, Any]]] = {}
    for log in logs:
        state, since = (states or {}).get(log.name, ("usable", None))
        operators.setdefault(log.operator, []).append(log.entry(state, since))
    document = {
        "version": "test",
        "log_list_timestamp": (published or utcnow()).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "operators": [{"name": name, "email": ["ct@invalid"], "logs": entries} for name, entries in operators.items()],
    }
    return json.dumps(document, indent=2).encode()


def issuer_key_hash(issuer: x509.Certificate) -> bytes:
    spki = issuer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def signed_struct(timestamp_ms: int, issuer: x509.Certificate, tbs: bytes, extensions: bytes = b"") -> bytes:
    """RFC 6962 §3.2 for a precert_entry: v1, certificate_timestamp, timestamp, precert_entry, key hash, TBS, extensions."""
    head = struct.pack(">BBQH", 0, 0, timestamp_ms, 1)
    body = issuer_key_hash(issuer) + len(tbs).to_bytes(3, "big") + tbs
    return head + body + len(extensions).to_bytes(2, "big") + extensions


def make_sct(
    log: TestLog,
    tbs: bytes,
    issuer: x509.Certificate,
    *,
    timestamp: dt.datetime | None = None,
    extensions: bytes = b"",
    signed_timestamp: dt.datetime | None = None,
    version: int = 0,
    hash_algorithm: int = 4,
) -> bytes:
    """One serialized SCT by `log` for the certificate whose precert TBS is `tbs`.

    `signed_timestamp` makes the log sign another time than the SCT states:
    a well-formed SCT whose signature does not verify.
    """
    # hours, not minutes, before now: a test module fixes its NOW at import, and a loaded full suite can reach its
    # tests 20 minutes later, when an SCT made "5 minutes ago" is already after that NOW (future_timestamp)
    when = int((timestamp or utcnow() - dt.timedelta(hours=6)).timestamp() * 1000)
    signed_when = int(signed_timestamp.timestamp() * 1000) if signed_timestamp else when
    algorithm, signature = log.sign(signed_struct(signed_when, issuer, tbs, extensions))
    return (
        struct.pack(">B", version)
        + log.log_id
        + struct.pack(">Q", when)
        + len(extensions).to_bytes(2, "big")
        + extensions
        + struct.pack(">BB", hash_algorithm, algorithm)
        + len(signature).to_bytes(2, "big")
        + signature
    )


def sct_list(scts: Sequence[bytes]) -> bytes:
    """The TLS-encoded SignedCertificateTimestampList of serialized SCTs."""
    body = b"".join(len(s).to_bytes(2, "big") + s for s in scts)
    return len(body).to_bytes(2, "big") + body


def octet_string(content: bytes) -> bytes:
    """DER OCTET STRING, the wrapper RFC 6962 §3.3 puts around the list inside extnValue."""
    if len(content) < 0x80:
        return b"\x04" + bytes([len(content)]) + content
    size = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
    return b"\x04" + bytes([0x80 | len(size)]) + size + content


def _leaf_builder(
    issuer: Issued, dns: Sequence[str], key: object, not_before: dt.datetime | None, not_after: dt.datetime | None
) -> x509.CertificateBuilder:
    start = not_before or utcnow() - dt.timedelta(days=1)
    end = not_after or utcnow() + dt.timedelta(days=90)
    return (
        _base_builder(_name(dns[0]), key.public_key(), issuer, (start, end))  # type: ignore[attr-defined]
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(dns, ("127.0.0.1",)), critical=False)
    )


SctSpec = TestLog | tuple[TestLog, dict[str, Any]] | bytes


def leaf_with_scts(
    issuer: Issued,
    dns: Sequence[str],
    scts: Sequence[SctSpec],
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    raw_extension: bytes | None = None,
) -> Issued:
    """A leaf issued by `issuer` embedding one SCT per spec: a log (signs it), (log, make_sct options), or raw SCT bytes.

    `raw_extension` replaces the whole extnValue (hostile-input tests); an empty
    `scts` with no `raw_extension` adds no SCT extension at all.
    """
    key = make_key("ec:P-256")
    builder = _leaf_builder(issuer, dns, key, not_before, not_after)
    precert_tbs = builder.sign(issuer.key, hashes.SHA256()).tbs_certificate_bytes  # type: ignore[arg-type]
    serialized = []
    for spec in scts:
        if isinstance(spec, bytes):
            serialized.append(spec)
        elif isinstance(spec, tuple):
            serialized.append(make_sct(spec[0], precert_tbs, issuer.cert, **spec[1]))
        else:
            serialized.append(make_sct(spec, precert_tbs, issuer.cert))
    value = raw_extension if raw_extension is not None else (octet_string(sct_list(serialized)) if serialized else None)
    if value is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(SCT_LIST_OID, value), critical=False)
    cert = builder.sign(issuer.key, hashes.SHA256())  # type: ignore[arg-type]
    if value is not None and raw_extension is None:
        # What the logs signed must be what a verifier rebuilds from the final certificate.
        assert cert.tbs_precertificate_bytes == precert_tbs
    return Issued(cert, key)
