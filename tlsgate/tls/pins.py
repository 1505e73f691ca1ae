"""Public-key pins in the ``sha256/<base64>`` form, and matching them against a chain.

The value is base64(SHA-256(DER SubjectPublicKeyInfo)): the HPKP definition,
what OkHttp's ``CertificatePinner`` takes after its ``sha256/`` prefix, and the
body of an Android Network Security Config ``<pin digest="SHA-256">`` element.
Pinning the key rather than the certificate is what lets a server renew its
certificate with the same key without breaking pinned apps.

Matching follows Android and OkHttp: a pin set is satisfied when *any* pin
equals the key of *any* certificate in the chain.  Both libraries check the
chain as validated by the platform (leaf up to and including the trust anchor),
not the raw list the server sent, so callers should pass the validated chain;
otherwise a pin on a root the server (correctly) does not send can never match.

This module also holds the few chain helpers (self-signature, role) that
``certcheck`` builds on, because ``certcheck`` already depends on this module.
It must stay free of mitmproxy so it can be tested and reused in isolation.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

PIN_PREFIX = "sha256/"
DIGEST_SIZE = 32

Role = Literal["leaf", "intermediate", "root"]
PinScope = Literal["any", "leaf", "ca"]  # which certificates of a chain a pin may match


class PinError(ValueError):
    """A pin string that cannot be used; the message says exactly why."""


# --------------------------------------------------------------------------- chain helpers


@functools.lru_cache(maxsize=4096)
def subject_text(cert: x509.Certificate) -> str:
    """RFC 4514 subject, with a placeholder so messages never show an empty name."""
    return cert.subject.rfc4514_string() or "(empty subject)"


def _verify_signature(cert: x509.Certificate, key: object) -> None:
    """Check ``cert``'s signature under ``key``; raise if it does not verify.

    Done by hand instead of via ``verify_directly_issued_by`` because
    cryptography refuses SHA-1/MD5 there, and old roots signed that way are
    exactly the self-signed certificates we need to recognise.
    """
    digest = cert.signature_hash_algorithm
    data, signature = cert.tbs_certificate_bytes, cert.signature
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, data)
        return
    if digest is None:
        raise InvalidSignature("EdDSA signature under a non-EdDSA key")
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, _rsa_padding(cert), digest)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(digest))
    elif isinstance(key, dsa.DSAPublicKey):
        key.verify(signature, data, digest)
    else:
        raise UnsupportedAlgorithm(f"cannot verify signatures with {type(key).__name__}")


def _rsa_padding(cert: x509.Certificate) -> padding.AsymmetricPadding:
    if cert.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS:
        pss = cert.signature_algorithm_parameters
        if isinstance(pss, padding.PSS):
            return pss
    return padding.PKCS1v15()


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if ``issuer``'s name and key produced ``cert``'s signature (any hash, even SHA-1)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        _verify_signature(cert, issuer.public_key())
    except (InvalidSignature, UnsupportedAlgorithm, TypeError, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=4096)
def is_self_signed(cert: x509.Certificate) -> bool:
    """Self-signed = signed by its own key, not merely issuer == subject (a CA key-rollover cert).

    Memoised: it verifies a signature, and every connection to a server presents the same chain.
    """
    return issued_by(cert, cert)


def cert_role(chain: Sequence[x509.Certificate], index: int) -> Role:
    """Position 0 is the leaf even when self-signed; later self-signed certificates are roots."""
    if index == 0:
        return "leaf"
    return "root" if is_self_signed(chain[index]) else "intermediate"


# --------------------------------------------------------------------------- pins


@functools.lru_cache(maxsize=4096)
def spki_digest(cert: x509.Certificate) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo.

    The SPKI is re-encoded from the parsed key, which is what Android
    (``getPublicKey().getEncoded()``), OkHttp and ``openssl x509 -pubkey`` hash,
    so the pins agree with theirs even for oddly encoded certificates.
    Raises ``UnsupportedAlgorithm`` for key types cryptography cannot parse.
    Memoised: matching, the mismatch message and the evidence all need the same
    chain's pins, and every connection to a server presents the same chain.
    """
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def format_pin(digest: bytes) -> str:
    return PIN_PREFIX + base64.b64encode(digest).decode("ascii")


def spki_pin(cert: x509.Certificate) -> str:
    """The ``sha256/...`` pin of the certificate's public key."""
    return format_pin(spki_digest(cert))


def parse_pin(text: str) -> bytes:
    """Validate a ``sha256/<base64>`` pin and return its 32-byte digest.

    Strict on purpose: a pin that is silently "fixed" here but rejected by the
    app under test would make tlsgate report a match the app never makes.
    """
    stripped = text.strip()
    if not stripped.startswith(PIN_PREFIX):
        raise PinError(_prefix_problem(stripped))
    body = stripped[len(PIN_PREFIX) :]
    try:
        digest = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PinError(f"pin {stripped!r}: the part after 'sha256/' is not valid base64 ({exc})") from None
    if len(digest) != DIGEST_SIZE:
        raise PinError(f"pin {stripped!r} decodes to {len(digest)} bytes, but a SHA-256 digest is {DIGEST_SIZE} bytes")
    return digest


def _prefix_problem(text: str) -> str:
    if text.lower().startswith("sha1/"):
        return f"pin {text!r} is a sha1/ pin; SHA-1 pins are not accepted, use the sha256/ pin of the same public key"
    if text.lower().startswith(PIN_PREFIX):
        return f"pin {text!r} must start with lowercase 'sha256/' (as OkHttp requires)"
    return (
        f"pin {text!r} does not start with 'sha256/' (sha1/ pins are not accepted); "
        "a pin is 'sha256/' followed by base64(SHA-256 of the SubjectPublicKeyInfo) - "
        "for the body of an Android <pin digest=\"SHA-256\"> element, prefix it with 'sha256/'"
    )


class ChainPin(NamedTuple):
    """One certificate of a chain as shown in pin messages."""

    role: Role
    subject: str
    pin: str


def chain_pins(chain: Sequence[x509.Certificate]) -> list[ChainPin]:
    """Every certificate's pin, so a mismatch message can show what to pin instead."""
    return [ChainPin(cert_role(chain, i), subject_text(c), _pin_text(c)) for i, c in enumerate(chain)]


def _pin_text(cert: x509.Certificate) -> str:
    try:
        return spki_pin(cert)
    except UnsupportedAlgorithm:
        return "unavailable (unsupported key type)"


@dataclass(frozen=True)
class PinMatch:
    """Outcome of matching one pin set against one chain, with everything a report needs."""

    pin_set: str
    matched: bool
    expected: tuple[str, ...]
    chain_pins: tuple[ChainPin, ...]
    index: int | None = None
    role: Role | None = None
    subject: str | None = None
    pin: str | None = None

    def message(self) -> str:
        if self.matched:
            return f"pin set '{self.pin_set}': {self.role} certificate {self.subject} matches pin {self.pin}"
        found = "; ".join(f"{c.role} {c.subject}: {c.pin}" for c in self.chain_pins)
        return (
            f"pin set '{self.pin_set}': pins expected {', '.join(self.expected)}; server's chain has {found or 'no certificates'}"
        )


@dataclass(frozen=True)
class PinSet:
    """Named pins with an optional expiry, like an Android ``<pin-set expiration=...>``.

    ``pin_texts`` keeps the strings as the user wrote them so messages quote
    the user's own configuration; empty means "derive them from ``pins``".

    ``scopes`` (parallel to ``pins``; empty means every pin is ``any``) gives a
    set Apple's ATS semantics: ``leaf`` pins must match the leaf's key and
    ``ca`` pins the key of a CA certificate above it, and when a set has both
    kinds each kind must match (NSPinnedLeafIdentities / NSPinnedCAIdentities:
    "if you include both, then both must produce a match"). A set mixes
    ``any`` with neither.
    """

    name: str
    pins: tuple[bytes, ...]
    pin_texts: tuple[str, ...] = field(default=())
    expires: dt.date | None = None
    scopes: tuple[PinScope, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.pins:
            raise PinError(f"pin set '{self.name}' has no pins")
        for digest in self.pins:
            if len(digest) != DIGEST_SIZE:
                raise PinError(f"pin set '{self.name}': a pin digest is {len(digest)} bytes, not 32")
        if not self.pin_texts:
            object.__setattr__(self, "pin_texts", tuple(format_pin(d) for d in self.pins))
        if len(self.pin_texts) != len(self.pins):
            raise PinError(f"pin set '{self.name}': {len(self.pin_texts)} texts for {len(self.pins)} pins")
        if self.scopes:
            if len(self.scopes) != len(self.pins):
                raise PinError(f"pin set '{self.name}': {len(self.scopes)} scopes for {len(self.pins)} pins")
            if "any" in self.scopes and set(self.scopes) != {"any"}:
                raise PinError(f"pin set '{self.name}' mixes pins for any certificate with leaf/CA pins")

    @classmethod
    def from_strings(cls, name: str, pins: Iterable[str], expires: dt.date | None = None) -> PinSet:
        texts = tuple(p.strip() for p in pins)
        return cls(name, tuple(parse_pin(t) for t in texts), texts, expires)

    def expired(self, today: dt.date) -> bool:
        """Android stops enforcing a pin-set at midnight starting its expiration date.

        (``XmlConfigSource`` parses ``yyyy-MM-dd`` to that midnight and
        ``checkPins`` skips once ``now`` is past it), so the date itself counts
        as expired.
        """
        return self.expires is not None and today >= self.expires

    @property
    def scoped(self) -> bool:
        """Leaf/CA pins with ATS semantics rather than Android's any-pin-any-certificate."""
        return any(scope != "any" for scope in self.scopes)

    def texts_for(self, scope: PinScope) -> tuple[str, ...]:
        if not self.scopes:
            return self.pin_texts if scope == "any" else ()
        return tuple(t for t, s in zip(self.pin_texts, self.scopes, strict=True) if s == scope)

    def match(self, chain: Sequence[x509.Certificate]) -> PinMatch:
        """First certificate (leaf first) whose key is pinned; any pin on any certificate counts.

        A scoped (ATS) set matches when its leaf pins match the leaf and its CA
        pins match a certificate above the leaf, each kind it has.
        """
        shown = tuple(chain_pins(chain))
        if self.scoped:
            return self._match_scoped(chain, shown)
        for index, cert in enumerate(chain):
            pin_index = self._pin_index(cert)
            if pin_index is not None:
                return PinMatch(
                    self.name,
                    True,
                    self.pin_texts,
                    shown,
                    index,
                    shown[index].role,
                    shown[index].subject,
                    self.pin_texts[pin_index],
                )
        return PinMatch(self.name, False, self.pin_texts, shown)

    def _match_scoped(self, chain: Sequence[x509.Certificate], shown: tuple[ChainPin, ...]) -> PinMatch:
        found: dict[PinScope, tuple[int, int]] = {}  # scope -> (chain index, pin index)
        for index, cert in enumerate(chain):
            scope: PinScope = "leaf" if index == 0 else "ca"
            if scope in found:
                continue
            pin_index = self._pin_index(cert, scope)
            if pin_index is not None:
                found[scope] = (index, pin_index)
        needed = set(self.scopes)
        if not needed <= set(found):
            return PinMatch(self.name, False, self.pin_texts, shown)
        index, pin_index = found["ca"] if "ca" in found else found["leaf"]
        return PinMatch(
            self.name, True, self.pin_texts, shown, index, shown[index].role, shown[index].subject, self.pin_texts[pin_index]
        )

    def _pin_index(self, cert: x509.Certificate, scope: PinScope = "any") -> int | None:
        try:
            digest = spki_digest(cert)
        except UnsupportedAlgorithm:
            return None
        for index, pinned in enumerate(self.pins):
            if pinned == digest and (not self.scopes or self.scopes[index] in (scope, "any")):
                return index
        return None


def lint_pin_set(pins: PinSet | Sequence[str]) -> list[str]:
    """Warnings about a pin set that works today but is fragile.

    A single pin bricks the app the day that key is rotated or compromised,
    which is why Android lint and RFC 7469 insist on a backup pin; duplicates
    usually mean the "backup" is not a backup at all.
    """
    pin_set = pins if isinstance(pins, PinSet) else PinSet.from_strings("pins", pins)
    warnings = _duplicate_warnings(pin_set)
    distinct = len(set(pin_set.pins))
    if distinct < 2:
        warnings.append(
            f"pin set '{pin_set.name}' has no backup pin ({distinct} distinct pin); "
            "add the pin of a spare key or of the issuing CA so a key rotation does not lock clients out"
        )
    return warnings


def _duplicate_warnings(pin_set: PinSet) -> list[str]:
    seen: dict[bytes, str] = {}
    warnings = []
    for digest, text in zip(pin_set.pins, pin_set.pin_texts, strict=True):
        if digest in seen:
            warnings.append(f"pin set '{pin_set.name}' lists pin {text} more than once (first as {seen[digest]})")
        else:
            seen[digest] = text
    return warnings
