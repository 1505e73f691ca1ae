"""Signed Certificate Timestamps embedded in a server's certificate, read and verified (RFC 6962).

A CA that logs a certificate gets one SCT per log and embeds the list in the
certificate (extension 1.3.6.1.4.1.11129.2.4.2). Each SCT is the log's
signature over the precertificate: the TBSCertificate without the SCT
extension, bound to the issuer by the SHA-256 of the issuer's key (§3.2).

Everything here reads bytes a server chose, so every length is checked before
it is used, at most `MAX_SCTS` are read, and a damaged list becomes a sentence
in `CtFacts.error` (numbers only, never the bytes), not an exception. The SCT
list is found by walking the TBSCertificate's DER here rather than through
`cryptography`'s extension parser, because that one refuses the whole
certificate over one SCT of an unknown version.

SCTs a server sends in the TLS extension or in a stapled OCSP response are not
read: pyOpenSSL exposes neither OpenSSL's SCT collection (SSL_enable_ct,
SSL_get0_peer_scts) nor a way to request the extension OpenSSL itself owns.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tlsgate.tls.ctlogs import LogKey, LogList, LogState

SCT_LIST_OID = "1.3.6.1.4.1.11129.2.4.2"
_SCT_LIST_OID_DER = bytes.fromhex("060a2b06010401d679020402")
MAX_SCTS = 64
LOG_ID_BYTES = 32
# DigitallySigned: hash 4 = sha256; signature 1 = rsa (PKCS#1 v1.5), 3 = ecdsa (RFC 5246 §7.4.1.4.1).
HASH_SHA256 = 4
SIG_RSA = 1
SIG_ECDSA = 3
# RFC 6962 §3.2 / §3.4: sct_version v1 = 0, signature_type certificate_timestamp = 0, entry types.
V1 = 0
CERTIFICATE_TIMESTAMP = 0
X509_ENTRY = 0
PRECERT_ENTRY = 1


class SctStatus(enum.StrEnum):
    VALID = "valid"  # a log the list trusts signed it, and the signature verifies
    UNVERIFIED = "unverified"  # a log the list trusts, signature not checked (`ct.verify: false`)
    UNKNOWN_LOG = "unknown_log"  # no log in the list has this log ID
    BAD_SIGNATURE = "bad_signature"  # the named log did not sign this certificate
    LOG_NOT_ACCEPTED = "log_not_accepted"  # pending, rejected, or retired before the SCT was issued
    FUTURE_TIMESTAMP = "future_timestamp"  # issued after tlsgate's clock: no log can have done so yet
    UNSUPPORTED = "unsupported"  # an SCT version or signature algorithm RFC 6962 does not define
    NO_ISSUER = "no_issuer"  # the issuer's key is needed to check it and the chain does not have it


COUNTING = frozenset({SctStatus.VALID, SctStatus.UNVERIFIED})


@dataclass(frozen=True)
class Sct:
    """One SCT as serialized (RFC 6962 §3.2); `version` other than v1 leaves the rest unread."""

    version: int
    log_id: bytes = b""
    timestamp_ms: int = 0
    extensions: bytes = b""
    hash_algorithm: int = 0
    signature_algorithm: int = 0
    signature: bytes = b""


@dataclass(frozen=True)
class SctResult:
    """What one SCT turned out to be, in words a finding can carry (public values only)."""

    index: int  # 1-based position in the certificate's list
    status: SctStatus
    log_id: str = ""  # base64, as log lists write it
    log: str | None = None  # the list's description of the log
    operator: str | None = None
    timestamp: str | None = None
    note: str = ""
    retired: bool = False  # the log has retired since: its SCT counts, but Chrome also wants one from a running log

    @property
    def counts(self) -> bool:
        return self.status in COUNTING

    def as_evidence(self) -> dict[str, object]:
        item: dict[str, object] = {"index": self.index, "status": str(self.status)}
        for key in ("log", "operator", "log_id", "timestamp"):
            value = getattr(self, key)
            if value:
                item[key] = value
        if self.retired:
            item["log_retired"] = True
        if self.note:
            item["note"] = self.note
        return item


@dataclass(frozen=True)
class CtFacts:
    """The SCTs of one leaf: `present` when the certificate carries the extension at all."""

    present: bool
    scts: tuple[SctResult, ...] = ()
    error: str | None = None  # why (part of) the list could not be read
    ignored: int = 0  # SCTs beyond MAX_SCTS, not read

    @property
    def counting(self) -> list[SctResult]:
        return [s for s in self.scts if s.counts]


class _Truncated(ValueError):
    pass


class _Bytes:
    """A bounded reader: every take() checks there is that much left."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int, what: str) -> bytes:
        if count > self.left():
            raise _Truncated(f"{what} needs {count} bytes, {self.left()} left")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size: int, what: str) -> bytes:
        return self.take(self.uint(size, f"{what} length"), what)


# -- finding the list in the certificate ---------------------------------------------------------------


def _der_item(data: bytes, pos: int, limit: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at `pos`, which must end by `limit`."""
    if pos + 2 > limit:
        raise ValueError("the certificate's extensions are truncated")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > limit:
            raise ValueError("the certificate's extensions have a malformed length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > limit:
        raise ValueError("an element of the certificate's extensions runs past its container")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    items = []
    while start < end:
        item = _der_item(data, start, end)
        items.append(item)
        start = item[2]
    return items


def embedded_sct_list(cert: x509.Certificate) -> bytes | None:
    """The TLS-encoded SignedCertificateTimestampList the certificate embeds, None when it has none.

    ValueError (said in words) when the extension is there but not an OCTET STRING
    around the list, or appears twice (RFC 5280 forbids repeating an extension).
    """
    tbs = cert.tbs_certificate_bytes
    _, start, end = _der_item(tbs, 0, len(tbs))
    found: list[bytes] = []
    for tag, begin, stop in _children(tbs, start, end):
        if tag != 0xA3:  # [3] EXPLICIT Extensions
            continue
        wrapped = _children(tbs, begin, stop)
        if len(wrapped) != 1 or wrapped[0][0] != 0x30:
            raise ValueError("the certificate's extensions are not a SEQUENCE")
        for ext_tag, ext_start, ext_end in _children(tbs, wrapped[0][1], wrapped[0][2]):
            parts = _children(tbs, ext_start, ext_end) if ext_tag == 0x30 else []
            if len(parts) < 2 or parts[0][0] != 0x06 or tbs[parts[0][1] - 2 : parts[0][2]] != _SCT_LIST_OID_DER:
                continue
            value_tag, value_start, value_end = parts[-1]
            if value_tag != 0x04:
                raise ValueError("the SCT list extension's value is not an OCTET STRING")
            inner_tag, inner_start, inner_end = _der_item(tbs, value_start, value_end)
            if inner_tag != 0x04 or inner_end != value_end:
                raise ValueError("the SCT list is not wrapped in an OCTET STRING as RFC 6962 section 3.3 requires")
            found.append(tbs[inner_start:inner_end])
    if len(found) > 1:
        raise ValueError(f"the certificate carries the SCT list extension {len(found)} times")
    return found[0] if found else None


# -- reading the list ------------------------------------------------------------------------------------


def parse_sct(data: bytes) -> Sct:
    reader = _Bytes(data)
    version = reader.uint(1, "version")
    if version != V1:
        return Sct(version)
    sct = Sct(
        version,
        reader.take(LOG_ID_BYTES, "log ID"),
        reader.uint(8, "timestamp"),
        reader.vector(2, "extensions"),
        reader.uint(1, "hash algorithm"),
        reader.uint(1, "signature algorithm"),
        reader.vector(2, "signature"),
    )
    if reader.left():
        raise _Truncated(f"{reader.left()} bytes follow the signature")
    return sct


def parse_sct_list(data: bytes) -> tuple[list[Sct | str], str | None, int]:
    """(each SCT, or why that one could not be read; why the list stopped being read; SCTs not read).

    A bad SCT does not hide the good ones before or after it when its own
    length is intact; a list whose outer lengths lie stops where they stop
    making sense.
    """
    reader = _Bytes(data)
    out: list[Sct | str] = []
    try:
        declared = reader.uint(2, "list length")
    except _Truncated:
        return out, "the SCT list is empty (no length)", 0
    if declared != reader.left():
        return out, f"the SCT list declares {declared} bytes but {reader.left()} follow", 0
    if declared == 0:
        return out, "the SCT list is empty", 0
    ignored = 0
    while reader.left():
        try:
            body = reader.vector(2, f"SCT {len(out) + ignored + 1}")
        except _Truncated as exc:
            return out, f"the SCT list is cut short: {exc}", ignored
        if len(out) >= MAX_SCTS:
            ignored += 1
            continue
        try:
            out.append(parse_sct(body))
        except _Truncated as exc:
            out.append(f"SCT {len(out) + 1} is malformed: {exc}")
    return out, None, ignored


# -- what a log signed -----------------------------------------------------------------------------------


def _signed_head(sct: Sct, entry_type: int) -> bytes:
    return struct.pack(">BBQH", V1, CERTIFICATE_TIMESTAMP, sct.timestamp_ms, entry_type)


def _tail(sct: Sct) -> bytes:
    return len(sct.extensions).to_bytes(2, "big") + sct.extensions


def issuer_key_hash(issuer: x509.Certificate) -> bytes:
    spki = issuer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def precert_signed_data(sct: Sct, issuer_hash: bytes, tbs_without_scts: bytes) -> bytes:
    """RFC 6962 §3.2 digitally-signed struct for a precert_entry: what an embedded SCT's log signed."""
    body = issuer_hash + len(tbs_without_scts).to_bytes(3, "big") + tbs_without_scts
    return _signed_head(sct, PRECERT_ENTRY) + body + _tail(sct)


def x509_signed_data(sct: Sct, certificate_der: bytes) -> bytes:
    """The same for an x509_entry: what an SCT from the TLS extension or an OCSP response covers."""
    return _signed_head(sct, X509_ENTRY) + len(certificate_der).to_bytes(3, "big") + certificate_der + _tail(sct)


def signature_verifies(key: LogKey, sct: Sct, signed: bytes) -> bool:
    """The log's signature over `signed`; False for a signature or an algorithm that does not fit the key."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and sct.signature_algorithm == SIG_ECDSA:
            key.verify(sct.signature, signed, ec.ECDSA(hashes.SHA256()))
            return True
        if isinstance(key, rsa.RSAPublicKey) and sct.signature_algorithm == SIG_RSA:
            key.verify(sct.signature, signed, padding.PKCS1v15(), hashes.SHA256())
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


# -- judging each SCT of a leaf --------------------------------------------------------------------------


def issuer_of(chain: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The certificate in the chain that signed the leaf (its key binds the SCTs to this issuer)."""
    leaf = chain[0]
    for candidate in chain[1:]:
        if candidate.subject != leaf.issuer:
            continue
        try:
            leaf.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return candidate
    return None


def _when(timestamp_ms: int) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(timestamp_ms / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None  # past year 9999: reported as in the future


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z") if moment else None


def _judge_one(
    index: int, sct: Sct, logs: LogList, now: dt.datetime, verify: bool, signed: bytes | None, issuer_missing: bool
) -> SctResult:
    if sct.version != V1:
        return SctResult(index, SctStatus.UNSUPPORTED, note=f"SCT version {sct.version + 1}; RFC 6962 defines v1 only")
    log_id = base64.b64encode(sct.log_id).decode()
    issued = _when(sct.timestamp_ms)
    log = logs.find(sct.log_id)
    if log is None:
        return SctResult(index, SctStatus.UNKNOWN_LOG, log_id, timestamp=_iso(issued), note="no log in the log list has this ID")

    retired = log.state is LogState.RETIRED and (log.state_since is None or log.state_since <= now)

    def result(status: SctStatus, note: str = "") -> SctResult:
        return SctResult(index, status, log_id, log.description, log.operator, _iso(issued), note, retired)

    if sct.hash_algorithm != HASH_SHA256 or sct.signature_algorithm not in (SIG_RSA, SIG_ECDSA):
        algorithms = f"hash {sct.hash_algorithm} / signature {sct.signature_algorithm}"
        return result(SctStatus.UNSUPPORTED, f"signed with {algorithms}; RFC 6962 logs sign SHA-256 with ECDSA or RSA")
    if issued is None or issued > now:
        return result(SctStatus.FUTURE_TIMESTAMP, "issued after tlsgate's clock")
    refused = log.refuses(issued)
    if refused:
        return result(SctStatus.LOG_NOT_ACCEPTED, refused)
    if not verify:
        return result(SctStatus.UNVERIFIED)
    if issuer_missing:
        return result(SctStatus.NO_ISSUER, "the chain does not hold the leaf's issuer")
    if signed is None:
        return result(SctStatus.NO_ISSUER, "the certificate could not be rebuilt as the precertificate its log signed")
    if not signature_verifies(log.key, sct, signed):
        return result(SctStatus.BAD_SIGNATURE, "the log's key does not verify it for this certificate")
    return result(SctStatus.VALID)


def examine(chain: Sequence[x509.Certificate], logs: LogList, now: dt.datetime, verify: bool = True) -> CtFacts:
    """Every embedded SCT of `chain[0]`, judged against `logs` (signatures checked when `verify`)."""
    if not chain:
        return CtFacts(False)
    leaf = chain[0]
    try:
        data = embedded_sct_list(leaf)
    except ValueError as exc:
        return CtFacts(True, error=str(exc))
    if data is None:
        return CtFacts(False)
    scts, error, ignored = parse_sct_list(data)
    issuer = issuer_of(chain) if verify else None
    tbs: bytes | None = None
    issuer_hash = b""
    if verify and issuer is not None:
        try:
            tbs = leaf.tbs_precertificate_bytes
            issuer_hash = issuer_key_hash(issuer)
        except ValueError:
            error = error or "the certificate could not be rebuilt as the precertificate its logs signed"
    results: list[SctResult] = []
    for index, item in enumerate(scts, 1):
        if isinstance(item, str):
            results.append(SctResult(index, SctStatus.UNSUPPORTED, note=item))
            continue
        signed = precert_signed_data(item, issuer_hash, tbs) if tbs is not None and item.version == V1 else None
        results.append(_judge_one(index, item, logs, now, verify, signed, issuer is None))
    return CtFacts(True, tuple(results), error, ignored)
