"""Certificate rules on top of chain validation: key sizes, signature hashes, dates.

OpenSSL (through mitmproxy) decides whether a chain is trusted; these rules
say what tlsgate additionally refuses or warns about in a chain it accepted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from tlsgate.policy.sections.certificates import CertRules
from tlsgate.tls.certcheck import key_description, public_key_or_none, signature_hash_name
from tlsgate.tls.pins import cert_role, is_self_signed, subject_text

_WEAK_HASHES = {"sha1", "md5", "md4", "md2"}
_BROKEN_HASHES = {"md5", "md4", "md2"}  # allow_sha1 does not reach these
_HASH_LABELS = {"sha1": "SHA-1", "md5": "MD5", "md4": "MD4", "md2": "MD2"}


@dataclass(frozen=True)
class CertIssue:
    """One finding about one certificate; ``blocking`` ones fail the connection when enforced."""

    kind: str
    cert_index: int
    subject: str
    detail: str
    blocking: bool


def _issue(kind: str, chain: Sequence[x509.Certificate], index: int, detail: str, blocking: bool) -> CertIssue:
    return CertIssue(kind, index, subject_text(chain[index]), detail, blocking)


def _named(chain: Sequence[x509.Certificate], index: int) -> str:
    return f"the {cert_role(chain, index)} certificate {subject_text(chain[index])}"


def _key_issues(chain: Sequence[x509.Certificate], index: int, rules: CertRules) -> list[CertIssue]:
    # Every upstream handshake runs this for every certificate: names and descriptions only once there is an issue.
    key = public_key_or_none(chain[index])
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= rules.min_rsa_bits:
        return []
    if isinstance(key, ec.EllipticCurvePublicKey) and key.key_size >= rules.min_ec_bits:
        return []
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return []
    who, description = _named(chain, index), key_description(chain[index])
    if isinstance(key, rsa.RSAPublicKey):
        detail = f"{who} has a {key.key_size}-bit RSA key; at least {rules.min_rsa_bits} bits are required"
        return [_issue("weak_rsa_key", chain, index, detail, True)]
    if isinstance(key, ec.EllipticCurvePublicKey):
        detail = f"{who} has an {description} key ({key.key_size} bits); curves of at least {rules.min_ec_bits} bits are required"
        return [_issue("weak_ec_key", chain, index, detail, True)]
    if isinstance(key, dsa.DSAPublicKey):
        detail = f"{who} has a {description} key; DSA is not accepted by current TLS clients (TLS 1.3 removed it)"
    else:
        detail = f"{who} has a key of type {description}, which cannot sign TLS handshakes"
    return [_issue("weak_key", chain, index, detail, True)]


def _signature_issues(chain: Sequence[x509.Certificate], index: int, rules: CertRules) -> list[CertIssue]:
    """A self-signed certificate's own signature protects nothing (trust comes from the store), so skip it."""
    digest = signature_hash_name(chain[index])
    if digest not in _WEAK_HASHES or is_self_signed(chain[index]):
        return []
    blocking = digest in _BROKEN_HASHES or not rules.allow_sha1
    detail = (
        f"{_named(chain, index)} is signed with {_HASH_LABELS[digest]}, which allows forged certificates; "
        f"its issuer must re-sign it with SHA-256"
    )
    return [_issue("sha1_signature", chain, index, detail, blocking)]


def _date_issues(chain: Sequence[x509.Certificate], index: int, rules: CertRules, now: dt.datetime) -> list[CertIssue]:
    """Non-blocking: whether a bad date matters is OpenSSL's call, which may build a path around it."""
    cert = chain[index]
    left = cert.not_valid_after_utc - now
    if cert.not_valid_before_utc <= now and left >= dt.timedelta(0) and left > dt.timedelta(days=rules.expiry_warning_days):
        return []  # the usual case: no name to build
    who = _named(chain, index)
    if cert.not_valid_before_utc > now:
        detail = f"{who} is not valid until {cert.not_valid_before_utc.date().isoformat()}"
        return [_issue("not_yet_valid", chain, index, detail, False)]
    if left < dt.timedelta(0):
        detail = f"{who} expired on {cert.not_valid_after_utc.date().isoformat()} ({_days(-left)} ago)"
        return [_issue("expired", chain, index, detail, False)]
    detail = f"{who} expires on {cert.not_valid_after_utc.date().isoformat()} (in {_days(left)})"
    return [_issue("expiring_soon", chain, index, detail, False)]


def _days(delta: dt.timedelta) -> str:
    """Whole days, rounded down, so "14 days" never overstates the time left."""
    if delta.days == 0:
        return "less than a day"
    return f"{delta.days} day" + ("" if delta.days == 1 else "s")


def _aware(now: dt.datetime) -> dt.datetime:
    """Certificates carry UTC; a naive ``now`` is taken to be UTC rather than local time."""
    return now if now.tzinfo else now.replace(tzinfo=dt.UTC)


def check_chain(chain: Sequence[x509.Certificate], rules: CertRules, now: dt.datetime) -> list[CertIssue]:
    """Policy findings for every certificate, leaf first; blocking ones should fail the connection."""
    moment = _aware(now)
    issues: list[CertIssue] = []
    for index in range(len(chain)):
        issues += _key_issues(chain, index, rules)
        issues += _signature_issues(chain, index, rules)
        issues += _date_issues(chain, index, rules, moment)
    return issues
