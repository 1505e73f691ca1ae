"""Turn certificate problems into a small vocabulary a tester can act on.

Two sources feed this module:

* OpenSSL's verdict on the upstream server (``X509_V_ERR_*`` code and/or its
  message text), classified by ``classify_verify_error`` into one of
  ``FAILURE_NAMES`` with a sentence saying what to change;
* tlsgate's own policy on chains that *did* verify (key sizes, SHA-1,
  upcoming expiry), produced by ``check_chain`` as ``CertIssue`` records.

Everything here is a pure function of certificates and numbers so it can be
tested with generated certificates and reused outside mitmproxy.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Literal, NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID

from tlsgate.tls.pins import cert_role, is_self_signed, issued_by, spki_pin, subject_text

FailureName = Literal[
    "expired",
    "not_yet_valid",
    "hostname_mismatch",
    "self_signed",
    "unknown_issuer",
    "incomplete_chain",
    "revoked",
    "invalid",
]

FAILURE_NAMES: tuple[FailureName, ...] = (
    "expired",
    "not_yet_valid",
    "hostname_mismatch",
    "self_signed",
    "unknown_issuer",
    "incomplete_chain",
    "revoked",
    "invalid",
)

SENTENCES: Mapping[FailureName, str] = {
    "expired": (
        "the server's certificate (or one in its chain) has expired; the server needs a renewed certificate "
        "- or, if the clock of the machine running tlsgate is wrong, fix that clock"
    ),
    "not_yet_valid": (
        "the server's certificate is not valid yet (its start date is in the future); this is nearly always "
        "a wrong clock on the machine running tlsgate or on the CA that issued it - check the clocks"
    ),
    "hostname_mismatch": (
        "the server's certificate does not cover the host name the client connected to; check the host the app "
        "calls, or reissue the certificate with that name in its subjectAltName"
    ),
    "self_signed": (
        "the server presents a self-signed certificate that no CA vouches for; if this is an expected test "
        "server, pass that certificate with --upstream-ca"
    ),
    "unknown_issuer": (
        "the server's certificate is signed by a CA that is not trusted; if this is a staging CA, pass it with --upstream-ca"
    ),
    "incomplete_chain": (
        "the server did not send the intermediate CA certificate that links its certificate to a trusted root; "
        "browsers often hide this by fetching the intermediate themselves, apps do not - configure the server "
        "to send its full chain (if the certificate was issued directly by a private CA, pass that CA with "
        "--upstream-ca instead)"
    ),
    "revoked": (
        "the server's certificate has been revoked by its CA; the server needs a new certificate, "
        "this is not something to override"
    ),
    "invalid": (
        "the server's certificate or chain was rejected for a reason other than dates, host name or trust "
        "(see OpenSSL's reason); it has to be fixed on the server"
    ),
}


class _Code(NamedTuple):
    constant: str
    name: FailureName
    texts: tuple[str, ...]  # X509_verify_cert_error_string wording, OpenSSL 3 first


# Codes from OpenSSL 3.0 <openssl/x509_vfy.h>.  The texts are what
# X509_verify_cert_error_string returns (lower-cased for matching) because
# OpenSSL 3 and mitmproxy often hand us only the text.  Extra spellings cover
# OpenSSL 1.1 ("self signed") and Python's own hostname messages.  Code 24 was
# INVALID_CA before 3.0; it is "invalid" under either meaning.
_CODES: dict[int, _Code] = {
    1: _Code("UNSPECIFIED", "invalid", ("unspecified certificate verification error",)),
    2: _Code("UNABLE_TO_GET_ISSUER_CERT", "unknown_issuer", ("unable to get issuer certificate",)),
    3: _Code("UNABLE_TO_GET_CRL", "invalid", ("unable to get certificate crl",)),
    4: _Code("UNABLE_TO_DECRYPT_CERT_SIGNATURE", "invalid", ("unable to decrypt certificate's signature",)),
    6: _Code("UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY", "invalid", ("unable to decode issuer public key",)),
    7: _Code("CERT_SIGNATURE_FAILURE", "invalid", ("certificate signature failure",)),
    9: _Code("CERT_NOT_YET_VALID", "not_yet_valid", ("certificate is not yet valid",)),
    10: _Code("CERT_HAS_EXPIRED", "expired", ("certificate has expired",)),
    11: _Code("CRL_NOT_YET_VALID", "invalid", ("crl is not yet valid",)),
    12: _Code("CRL_HAS_EXPIRED", "invalid", ("crl has expired",)),
    13: _Code("ERROR_IN_CERT_NOT_BEFORE_FIELD", "invalid", ("format error in certificate's notbefore field",)),
    14: _Code("ERROR_IN_CERT_NOT_AFTER_FIELD", "invalid", ("format error in certificate's notafter field",)),
    18: _Code("DEPTH_ZERO_SELF_SIGNED_CERT", "self_signed", ("self-signed certificate", "self signed certificate")),
    # 19: the chain ends in a self-signed root nobody trusts - to a tester that
    # is an untrusted CA (fix: --upstream-ca), not a self-signed server.
    19: _Code(
        "SELF_SIGNED_CERT_IN_CHAIN",
        "unknown_issuer",
        ("self-signed certificate in certificate chain", "self signed certificate in certificate chain"),
    ),
    20: _Code("UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "unknown_issuer", ("unable to get local issuer certificate",)),
    21: _Code("UNABLE_TO_VERIFY_LEAF_SIGNATURE", "unknown_issuer", ("unable to verify the first certificate",)),
    22: _Code("CERT_CHAIN_TOO_LONG", "invalid", ("certificate chain too long",)),
    23: _Code("CERT_REVOKED", "revoked", ("certificate revoked",)),
    24: _Code("NO_ISSUER_PUBLIC_KEY", "invalid", ("issuer certificate doesn't have a public key",)),
    25: _Code("PATH_LENGTH_EXCEEDED", "invalid", ("path length constraint exceeded",)),
    26: _Code("INVALID_PURPOSE", "invalid", ("unsuitable certificate purpose",)),
    27: _Code("CERT_UNTRUSTED", "unknown_issuer", ("certificate not trusted",)),
    28: _Code("CERT_REJECTED", "invalid", ("certificate rejected",)),
    32: _Code("KEYUSAGE_NO_CERTSIGN", "invalid", ("key usage does not include certificate signing",)),
    34: _Code("UNHANDLED_CRITICAL_EXTENSION", "invalid", ("unhandled critical extension",)),
    37: _Code("INVALID_NON_CA", "invalid", ("invalid non-ca certificate (has ca markings)",)),
    41: _Code("INVALID_EXTENSION", "invalid", ("invalid or inconsistent certificate extension",)),
    47: _Code("PERMITTED_VIOLATION", "invalid", ("permitted subtree violation",)),
    48: _Code("EXCLUDED_VIOLATION", "invalid", ("excluded subtree violation",)),
    62: _Code("HOSTNAME_MISMATCH", "hostname_mismatch", ("hostname mismatch", "doesn't match")),
    63: _Code("EMAIL_MISMATCH", "invalid", ("email address mismatch",)),
    64: _Code("IP_ADDRESS_MISMATCH", "hostname_mismatch", ("ip address mismatch",)),
    66: _Code("EE_KEY_TOO_SMALL", "invalid", ("ee certificate key too weak",)),
    67: _Code("CA_KEY_TOO_SMALL", "invalid", ("ca certificate key too weak",)),
    68: _Code("CA_MD_TOO_WEAK", "invalid", ("ca signature digest algorithm too weak",)),
    74: _Code("OCSP_VERIFY_FAILED", "invalid", ("ocsp verification failed",)),
    79: _Code("INVALID_CA", "invalid", ("invalid ca certificate",)),
    85: _Code("MISSING_AUTHORITY_KEY_IDENTIFIER", "invalid", ("missing authority key identifier",)),
    86: _Code("MISSING_SUBJECT_KEY_IDENTIFIER", "invalid", ("missing subject key identifier",)),
    89: _Code("CA_BCONS_NOT_CRITICAL", "invalid", ("basic constraints of ca cert not marked critical",)),
    92: _Code("CA_CERT_MISSING_KEY_USAGE", "invalid", ("ca cert does not include key usage extension",)),
}

VERIFY_ERRORS: Mapping[int, FailureName] = {code: entry.name for code, entry in _CODES.items()}
"""OpenSSL X509 verify error code -> failure name; codes not listed classify as ``invalid``."""

_TEXTS: list[tuple[str, int]] = sorted(
    ((text, code) for code, entry in _CODES.items() for text in entry.texts),
    key=lambda pair: -len(pair[0]),  # longest first: "... in certificate chain" beats "self-signed certificate"
)

_ISSUER_NOT_FOUND = frozenset(
    f"X509_V_ERR_{c}"
    for c in ("UNABLE_TO_GET_ISSUER_CERT", "UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "UNABLE_TO_VERIFY_LEAF_SIGNATURE")
)


@dataclass(frozen=True)
class CertFailure:
    """A classified verification failure; ``code`` and ``message`` are kept verbatim as evidence.

    ``openssl_name`` is the ``X509_V_ERR_*`` constant, taken from the code or,
    when only text was available, from the text; ``note`` explains any
    refinement made from the presented chain.
    """

    name: FailureName
    sentence: str
    code: int | None
    message: str
    openssl_name: str | None = None
    note: str | None = None

    def describe(self) -> str:
        text = f"{self.name}: {self.sentence}"
        if self.note:
            text += f". {self.note}"
        return text + (f" (OpenSSL: {self.message})" if self.message else "")


def _code_from_message(message: str) -> int | None:
    lowered = message.lower()
    return next((code for text, code in _TEXTS if text in lowered), None)


def classify_verify_error(code: int | None, message: str) -> CertFailure:
    """Classify by code when OpenSSL gave a known one, else by the message text.

    The code wins when both exist because texts are version-dependent
    ("self signed" became "self-signed" in OpenSSL 3) while codes are stable.
    """
    known = code if code in _CODES else _code_from_message(message)
    if known is None:
        return CertFailure("invalid", SENTENCES["invalid"], code, message)
    entry = _CODES[known]
    return CertFailure(entry.name, SENTENCES[entry.name], code, message, f"X509_V_ERR_{entry.constant}")


def refine_with_chain(failure: CertFailure, chain: Sequence[x509.Certificate]) -> CertFailure:
    """Use the chain the server presented to tell a missing intermediate from an untrusted CA.

    OpenSSL says "unable to get (local) issuer certificate" for both.  What the
    chain can honestly show:

    * the server sent its certificate's issuer -> the gap is above what it
      sent; servers normally omit the root, so an untrusted root is the likely
      story: stays ``unknown_issuer``;
    * it did not, and the leaf carries an AIA caIssuers URL (every public CA
      sets one; it is how browsers fetch a missing intermediate, which is why
      such sites "work in the browser" but not in apps) -> ``incomplete_chain``;
    * it did not and there is no AIA URL -> typically a leaf issued straight
      from a private root (mkcert, a test CA): stays ``unknown_issuer``.

    Either way the ``note`` states the evidence and the other possibility;
    when the chain cannot tell, the answer stays ``unknown_issuer``.
    """
    if failure.openssl_name not in _ISSUER_NOT_FOUND or not chain:
        return failure
    leaf = chain[0]
    if is_self_signed(leaf):
        return failure
    if any(issued_by(leaf, other) for other in chain[1:]):
        return replace(failure, note=_untrusted_top_note(chain))
    urls = ca_issuers_urls(leaf)
    note = _missing_issuer_note(leaf, len(chain), urls)
    if urls:
        return replace(failure, name="incomplete_chain", sentence=SENTENCES["incomplete_chain"], note=note)
    return replace(failure, note=note)


def _untrusted_top_note(chain: Sequence[x509.Certificate]) -> str:
    top = _linked_top(chain)
    return (
        f"the server sent its chain up to {subject_text(top)}, whose issuer "
        f"{top.issuer.rfc4514_string()} is not trusted here (a missing further intermediate would look the same)"
    )


def _linked_top(chain: Sequence[x509.Certificate]) -> x509.Certificate:
    """Follow issuer links from the leaf through the presented certificates, in any order."""
    current, remaining = chain[0], list(chain[1:])
    while parent := next((c for c in remaining if issued_by(current, c)), None):
        remaining.remove(parent)
        current = parent
    return current


def _missing_issuer_note(leaf: x509.Certificate, sent: int, urls: list[str]) -> str:
    note = (
        f"the server sent {sent} certificate(s) and none of them issued its certificate (issuer {leaf.issuer.rfc4514_string()})"
    )
    if urls:
        return note + f"; the certificate says its issuer can be fetched from {', '.join(urls)}"
    return note + "; it names no place to fetch its issuer from, so it may come straight from a private CA"


def ca_issuers_urls(cert: x509.Certificate) -> list[str]:
    """AIA caIssuers URLs: where the issuing CA's certificate is published."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [
        d.access_location.value
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]


# --------------------------------------------------------------------------- policy checks on chains

_CURVE_NAMES = {
    "secp192r1": "P-192",
    "secp224r1": "P-224",
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
}
_LEGACY_SIGNATURE_OIDS = {
    "1.2.840.113549.1.1.2": "md2",
    "1.2.840.113549.1.1.3": "md4",
    "1.2.840.113549.1.1.4": "md5",
    "1.2.840.113549.1.1.5": "sha1",
    "1.2.840.10045.4.1": "sha1",
    "1.2.840.10040.4.3": "sha1",
}


def key_description(cert: x509.Certificate) -> str:
    """ "RSA 2048", "EC P-256", "Ed25519", "DSA 2048"; never raises, so evidence is always complete."""
    try:
        key = cert.public_key()
    except UnsupportedAlgorithm:
        return f"unknown ({cert.public_key_algorithm_oid.dotted_string})"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {_CURVE_NAMES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
    return f"unknown ({cert.public_key_algorithm_oid.dotted_string})"


def signature_hash_name(cert: x509.Certificate) -> str:
    """Hash inside the signature ("sha256", "sha1"...); "none" for EdDSA, which hashes internally."""
    legacy = _LEGACY_SIGNATURE_OIDS.get(cert.signature_algorithm_oid.dotted_string)
    if legacy:
        return legacy
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return f"unknown ({cert.signature_algorithm_oid.dotted_string})"
    return "none" if algorithm is None else algorithm.name


@functools.lru_cache(maxsize=1024)
def public_key_or_none(cert: x509.Certificate) -> object | None:
    """Parsed once per certificate: every handshake with a server checks the same chain's keys."""
    try:
        return cert.public_key()
    except UnsupportedAlgorithm:
        return None


def chain_summary(chain: Sequence[x509.Certificate]) -> list[dict[str, object]]:
    """JSON-ready description of each certificate, for evidence and for printing pins."""
    return [_summary(chain, index) for index in range(len(chain))]


def _summary(chain: Sequence[x509.Certificate], index: int) -> dict[str, object]:
    return {"index": index, "role": cert_role(chain, index), **_described(chain[index])}


@functools.lru_cache(maxsize=1024)
def _described(cert: x509.Certificate) -> Mapping[str, object]:
    """What a certificate says about itself, read once per certificate (certificates hash by their DER).

    A report-mode pin or certificate finding carries the chain's description, and
    every connection to that server presents the same chain: building it afresh
    (names, dates, key, pin) was half the cost of such a finding.
    """
    try:
        pin = spki_pin(cert)
    except UnsupportedAlgorithm:
        pin = "unavailable (unsupported key type)"
    return MappingProxyType(
        {
            "subject": subject_text(cert),
            "issuer": cert.issuer.rfc4514_string(),
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "pin": pin,
            "key": key_description(cert),
            "signature_hash": signature_hash_name(cert),
            "self_signed": is_self_signed(cert),
        }
    )
