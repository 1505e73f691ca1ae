"""What a stapled OCSP response proves about an upstream's certificate, read without trusting a byte of it.

A server may staple its CA's signed statement that its certificate is good
(or revoked) to the handshake (RFC 6066 `status_request`). The bytes arrive
from the server, so they are hostile: `read_staple` turns them into one
`Staple` fact (good, revoked, unknown, or why the response proves nothing)
and never raises. A response proves something only when every step holds:

1. it parses as a DER OCSPResponse no larger than MAX_RESPONSE_BYTES, with
   responseStatus `successful`;
2. one of its SingleResponses names this leaf (certID: serial number and the
   hashes of the issuer's name and key, in the hash the response chose);
3. it is signed by the leaf's issuer, or by a responder certificate the issuer
   issued directly with the id-kp-OCSPSigning purpose (RFC 6960 4.2.2.2);
4. it is current: thisUpdate not in the future and nextUpdate not past, each
   with CLOCK_SKEW of slack (without nextUpdate, RESPONSE_LIFETIME after
   thisUpdate, as Firefox does).

Nothing here fetches anything: tlsgate judges only what the server staples.
Facts carry names, times, reasons and sizes, never the response's bytes.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

# OpenSSL takes at most 16 KiB for a TLS 1.2 CertificateStatus and 100 KiB for a TLS 1.3 Certificate message;
# real staples are 300 bytes to 4 KiB. Anything above this is refused unread.
MAX_RESPONSE_BYTES = 64 * 1024
# A response may carry many SingleResponses and certificates; only this many are looked at.
MAX_SINGLE_RESPONSES = 64
MAX_RESPONDER_CERTIFICATES = 8
CLOCK_SKEW = dt.timedelta(minutes=5)
RESPONSE_LIFETIME = dt.timedelta(days=1)  # a response without nextUpdate (Firefox's rule)

_CERT_ID_HASHES: tuple[type[hashes.HashAlgorithm], ...] = (
    hashes.SHA1,
    hashes.SHA224,
    hashes.SHA256,
    hashes.SHA384,
    hashes.SHA512,
)


class Outcome(enum.StrEnum):
    """What one stapled response says, or the first reason it says nothing."""

    ABSENT = "absent"  # the server stapled nothing
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"  # not a DER OCSPResponse
    UNSUCCESSFUL = "unsuccessful"  # responseStatus other than successful (tryLater, unauthorized, ...)
    NO_ISSUER = "no_issuer"  # the validated chain holds no issuer to check the response against
    WRONG_CERTIFICATE = "wrong_certificate"  # no SingleResponse names this leaf
    BAD_SIGNATURE = "bad_signature"  # not signed by the issuer or a delegated responder it issued
    NOT_YET_VALID = "not_yet_valid"  # thisUpdate in the future
    EXPIRED = "expired"  # nextUpdate (or thisUpdate + RESPONSE_LIFETIME) has passed
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"  # the responder does not know the certificate

    @property
    def proves(self) -> bool:
        """An authentic, current statement about this very certificate."""
        return self in (Outcome.GOOD, Outcome.REVOKED, Outcome.UNKNOWN)


@dataclass(frozen=True)
class Staple:
    """One stapled response, judged: the outcome, a sentence saying it, and what it showed on the way."""

    outcome: Outcome
    detail: str
    size: int = 0
    response_status: str | None = None  # "successful", "try_later", ... once parsed
    responder: str | None = None  # "issuer" or "delegated" once the signature holds
    this_update: dt.datetime | None = None
    next_update: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None  # "key_compromise", ... (RFC 5280 CRLReason), when given

    def evidence(self) -> dict[str, Any]:
        """JSON-safe, value-free: what a finding quotes."""
        out: dict[str, Any] = {"staple": str(self.outcome), "staple_bytes": self.size}
        for key in ("response_status", "responder", "revocation_reason"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        for key in ("this_update", "next_update", "revoked_at"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.isoformat()
        return out


def must_staple(leaf: x509.Certificate) -> bool:
    """The leaf carries the TLS Feature extension with status_request (RFC 7633 "OCSP Must-Staple")."""
    try:
        feature = leaf.extensions.get_extension_for_class(x509.TLSFeature).value
    except x509.ExtensionNotFound:
        return False
    except Exception:  # noqa: BLE001 - a malformed extension promises nothing readable
        return False
    return x509.TLSFeatureType.status_request in feature


def read_staple(data: bytes | None, chain: Sequence[x509.Certificate], now: dt.datetime) -> Staple:
    """Judge the stapled bytes against the validated chain (leaf first); never raises."""
    if not data:
        return Staple(Outcome.ABSENT, "the server stapled no OCSP response")
    size = len(data)
    if size > MAX_RESPONSE_BYTES:
        return Staple(
            Outcome.TOO_LARGE,
            f"the stapled OCSP response is {size} bytes, above the {MAX_RESPONSE_BYTES} tlsgate reads",
            size,
        )
    try:
        return _read(data, chain, now)
    except Exception as exc:  # noqa: BLE001 - hostile bytes must become a fact, never an exception in a handshake
        return Staple(Outcome.MALFORMED, f"the stapled OCSP response could not be read ({type(exc).__name__})", size)


def _read(data: bytes, chain: Sequence[x509.Certificate], now: dt.datetime) -> Staple:
    size = len(data)
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError:
        return Staple(Outcome.MALFORMED, "the stapled bytes are not a DER-encoded OCSP response", size)
    status = response.response_status
    status_name = status.name.lower()
    if status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return Staple(
            Outcome.UNSUCCESSFUL,
            f"the stapled OCSP response carries no status: its responder answered {status_name}",
            size,
            status_name,
        )
    if len(chain) < 2:
        return Staple(
            Outcome.NO_ISSUER,
            "the validated chain has no issuer certificate to check the stapled OCSP response against",
            size,
            status_name,
        )
    leaf, issuer = chain[0], chain[1]
    single = _single_for(response, leaf, issuer)
    if single is None:
        return Staple(
            Outcome.WRONG_CERTIFICATE,
            "the stapled OCSP response is about another certificate (no entry matches the leaf's serial number and issuer)",
            size,
            status_name,
        )
    this_update, next_update = single.this_update_utc, single.next_update_utc
    times = {"this_update": this_update, "next_update": next_update}
    responder, why = _signer(response, issuer, now)
    if responder is None:
        return Staple(
            Outcome.BAD_SIGNATURE, f"the stapled OCSP response is not from the leaf's CA: {why}", size, status_name, **times
        )
    known = {"response_status": status_name, "responder": responder, **times}
    cert_status = single.certificate_status
    if cert_status is ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason
        revoked = {"revoked_at": single.revocation_time_utc, "revocation_reason": reason.name if reason else None}
        stale = _stale(this_update, next_update, now)
        # Revocation is final (RFC 5280 5.3.1) except a certificate on hold: an authentic "revoked" stays true when old.
        if stale is None or reason is not x509.ReasonFlags.certificate_hold:
            reason_words = f" (reason: {reason.name})" if reason else ""
            when = single.revocation_time_utc.date().isoformat()
            detail = f"the server's certificate was revoked on {when}{reason_words}, says its CA's stapled OCSP response"
            return Staple(Outcome.REVOKED, detail, size, **known, **revoked)
        return Staple(stale[0], stale[1], size, **known, **revoked)
    stale = _stale(this_update, next_update, now)
    if stale is not None:
        return Staple(stale[0], stale[1], size, **known)
    if cert_status is ocsp.OCSPCertStatus.GOOD:
        return Staple(Outcome.GOOD, "the server stapled a current OCSP response from its CA saying good", size, **known)
    return Staple(
        Outcome.UNKNOWN, "the server's CA answered unknown: its OCSP responder does not know the certificate", size, **known
    )


def _single_for(response: ocsp.OCSPResponse, leaf: x509.Certificate, issuer: x509.Certificate) -> Any:
    """The SingleResponse whose certID is this leaf's, in whichever hash the responder used."""
    ids: dict[str, tuple[bytes, bytes] | None] = {}
    for index, single in enumerate(response.responses):
        if index >= MAX_SINGLE_RESPONSES:
            return None
        if single.serial_number != leaf.serial_number:
            continue
        try:
            algorithm = single.hash_algorithm
        except UnsupportedAlgorithm:
            continue
        if algorithm.name not in ids:
            ids[algorithm.name] = _cert_id_hashes(leaf, issuer, algorithm)
        expected = ids[algorithm.name]
        if expected is not None and (single.issuer_name_hash, single.issuer_key_hash) == expected:
            return single
    return None


def _cert_id_hashes(
    leaf: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> tuple[bytes, bytes] | None:
    """(issuer name hash, issuer key hash) as RFC 6960 4.1.1 defines them, computed by cryptography's own builder."""
    if not isinstance(algorithm, _CERT_ID_HASHES):
        return None
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, algorithm).build()
    return request.issuer_name_hash, request.issuer_key_hash


def _names_signer(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    """The ResponderID (byKey: SHA-1 of the subjectPublicKey bits; or byName) identifies `cert`."""
    if response.responder_key_hash is not None:
        try:
            return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest == response.responder_key_hash
        except Exception:  # noqa: BLE001 - a key cryptography cannot load identifies nothing
            return False
    return response.responder_name == cert.subject


def _signer(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: dt.datetime) -> tuple[str | None, str]:
    """("issuer" | "delegated", "") when the signature holds, else (None, why)."""
    if _names_signer(response, issuer):
        return ("issuer", "") if _verifies(response, issuer) else (None, "its signature does not verify with the CA's key")
    candidates = [c for c in response.certificates[:MAX_RESPONDER_CERTIFICATES] if _names_signer(response, c)]
    if not candidates:
        return None, "it is signed by a responder that is neither the CA nor a certificate the response carries"
    why = ""
    for responder in candidates:
        why = _delegation_problem(responder, issuer, now)
        if why:
            continue
        if _verifies(response, responder):
            return "delegated", ""
        why = "its signature does not verify with the responder certificate's key"
    return None, why


def _delegation_problem(responder: x509.Certificate, issuer: x509.Certificate, now: dt.datetime) -> str:
    """Why `responder` may not speak for `issuer` (RFC 6960 4.2.2.2), or "" when it may."""
    try:
        responder.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return "its responder certificate was not issued by the leaf's CA"
    try:
        usages = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is None or ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        return "its responder certificate lacks the OCSP signing purpose (id-kp-OCSPSigning)"
    if not responder.not_valid_before_utc - CLOCK_SKEW <= now <= responder.not_valid_after_utc + CLOCK_SKEW:
        return "its responder certificate is outside its validity period"
    return ""


def _verifies(response: ocsp.OCSPResponse, signer: x509.Certificate) -> bool:
    try:
        key = signer.public_key()
        signature, data = response.signature, response.tbs_response_bytes
        if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
            return True
        algorithm = response.signature_hash_algorithm
        if algorithm is None:
            return False
        if isinstance(key, rsa.RSAPublicKey):
            pss = response.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
            scheme = padding.PSS(padding.MGF1(algorithm), padding.PSS.AUTO) if pss else padding.PKCS1v15()
            key.verify(signature, data, scheme, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, dsa.DSAPublicKey):
            key.verify(signature, data, algorithm)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def _stale(this_update: dt.datetime, next_update: dt.datetime | None, now: dt.datetime) -> tuple[Outcome, str] | None:
    if this_update > now + CLOCK_SKEW:
        return Outcome.NOT_YET_VALID, (
            f"the stapled OCSP response is dated {this_update.isoformat()}, in the future (check this machine's clock)"
        )
    until = next_update if next_update is not None else this_update + RESPONSE_LIFETIME
    if until < now - CLOCK_SKEW:
        basis = "its nextUpdate" if next_update is not None else "a day after its thisUpdate (it has no nextUpdate)"
        return Outcome.EXPIRED, f"the stapled OCSP response expired at {until.isoformat()} ({basis})"
    return None
