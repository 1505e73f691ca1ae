"""Upstream TLS verdicts from plain facts: negotiated version and suite, the chain, the rules.

The addon gathers the facts from OpenSSL mid-handshake (in the certificate
verify callback, where version and suite are already negotiated) and applies
the verdict; everything here is pure so each case is a one-line unit test.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from proxy.policy.presets import TLS_VERSIONS
from proxy.policy.sections import Pinning, TlsRules
from proxy.tls.certcheck import CertRules, chain_summary, check_chain, classify_verify_error, refine_with_chain
from proxy.tls.ciphers import lookup, weakness_reasons
from proxy.tls.pins import chain_pins

# Short names for the catalogue's weakness words, as a tester would say them.
WEAKNESS_LABELS = {
    "null": "NULL cipher (no encryption)",
    "export": "EXPORT-grade key",
    "anonymous": "anonymous (no server authentication)",
    "rc4": "RC4",
    "des": "DES/3DES",
    "no_forward_secrecy": "no forward secrecy (static key exchange)",
    "cbc": "CBC mode",
    "md5_mac": "MD5 MAC",
    "sha1_mac": "SHA-1 MAC",
}

# OpenSSL's protocol names -> the policy's version words.
PROTOCOL_NAMES = {"SSLv3": "0.3", "TLSv1": "1.0", "TLSv1.1": "1.1", "TLSv1.2": "1.2", "TLSv1.3": "1.3"}


@dataclass(frozen=True)
class Issue:
    """One thing wrong (or worth knowing) about an upstream connection."""

    check: str  # protocol | cipher | certificate | pin
    kind: str  # e.g. version_too_low, weak_suite, pin_mismatch, expired, expiring_soon, pin_set_expired
    blocking: bool
    severity: str
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)
    remedy: str = ""


def version_word(protocol: str | None) -> str | None:
    return PROTOCOL_NAMES.get(protocol or "")


def version_below(version: str | None, minimum: str) -> bool:
    if version is None:
        return False
    order = ("0.3", *TLS_VERSIONS)
    return order.index(version) < order.index(minimum)


def judge_protocol(protocol: str | None, rules: TlsRules) -> list[Issue]:
    version = version_word(protocol)
    if not version_below(version, rules.min_version):
        return []
    return [
        Issue(
            "protocol",
            "version_too_low",
            True,
            "high",
            f"the server negotiated TLS {version}, below the policy minimum TLS {rules.min_version}",
            {"negotiated_version": protocol, "min_version": rules.min_version},
            f"upgrade the server to TLS {rules.min_version} or newer, or lower tls.min_version for this host",
        )
    ]


def judge_cipher(cipher: str | None, rules: TlsRules) -> list[Issue]:
    if not cipher:
        return []
    suite = lookup(cipher)
    if suite is None:
        return [
            Issue(
                "cipher",
                "unknown_suite",
                False,
                "low",
                f"negotiated suite {cipher} is not in tlsgate's catalogue",
                {"negotiated_suite": cipher},
            )
        ]
    allowed, reasons = rules.ciphers.check(suite.code)
    evidence = {
        "negotiated_suite": suite.iana_name,
        "openssl_name": suite.openssl_name,
        "code": suite.code_hex,
        "weaknesses": list(suite.weaknesses),
    }
    labels = ", ".join(WEAKNESS_LABELS.get(w, w) for w in suite.weaknesses)
    why = " ".join(weakness_reasons(suite))
    if allowed:
        if not suite.weaknesses:
            return []
        return [
            Issue(
                "cipher",
                "weak_suite_allowed",
                False,
                "low",
                f"negotiated {suite.iana_name}, allowed by the policy but weak ({labels}). {why}",
                evidence,
            )
        ]
    policy_reasons = [r for r in reasons if r not in weakness_reasons(suite)]
    weak = f" Weak: {labels}. {why}" if labels else ""
    return [
        Issue(
            "cipher",
            "weak_suite",
            True,
            "high",
            f"negotiated {suite.iana_name} ({suite.openssl_name}), refused by the policy ({'; '.join(policy_reasons)}).{weak}",
            evidence,
            "configure the server for forward-secret AEAD suites (Mozilla 'intermediate'), or change tls.ciphers for this host",
        )
    ]


def judge_certificates(chain: Sequence[x509.Certificate], rules: CertRules, now: dt.datetime) -> list[Issue]:
    issues = []
    for cert_issue in check_chain(chain, rules, now):
        severity = "high" if cert_issue.blocking else "medium"
        issues.append(
            Issue(
                "certificate",
                cert_issue.kind,
                cert_issue.blocking,
                severity,
                cert_issue.detail,
                {"certificate": cert_issue.subject, "chain_index": cert_issue.cert_index},
                "replace the certificate" if cert_issue.blocking else "",
            )
        )
    return issues


def judge_pins(chain: Sequence[x509.Certificate], pinning: Pinning | None, today: dt.date) -> list[Issue]:
    if pinning is None:
        return []
    pin_set = pinning.pin_set
    where = pinning.location.rule_ref
    if pin_set.expired(today):
        return [
            Issue(
                "pin",
                "pin_set_expired",
                False,
                "medium",
                f"pin set '{pin_set.name}' expired on {pin_set.expires}; it is no longer enforced (as on Android)",
                {"pin_set": pin_set.name, "expires": str(pin_set.expires), "pin_set_at": where},
                f"rotate the pins at {where} (tlsgate pin <host> prints the current ones) and set a new expires date",
            )
        ]
    match = pin_set.match(chain)
    evidence = {
        "pin_set": pin_set.name,
        "pin_set_at": where,
        "expected": list(match.expected),
        "chain": [{"role": c.role, "subject": c.subject, "pin": c.pin} for c in match.chain_pins],
    }
    if match.matched:
        return []
    return [
        Issue(
            "pin",
            "pin_mismatch",
            True,
            "critical",
            f"no certificate in the server's chain matches pin set '{pin_set.name}': {match.message()}",
            evidence,
            f"if the server's key changed on purpose, add one of the chain's pins to pin set '{pin_set.name}' at {where}; "
            "otherwise something between tlsgate and the server is presenting another certificate",
        )
    ]


def judge_handshake(
    protocol: str | None,
    cipher: str | None,
    chain: Sequence[x509.Certificate],
    tls: TlsRules,
    certificates: CertRules,
    pinning: Pinning | None,
    now: dt.datetime,
) -> list[Issue]:
    """Everything known once the server's certificate has been received, in the order users fix them."""
    return [
        *judge_protocol(protocol, tls),
        *judge_cipher(cipher, tls),
        *judge_certificates(chain, certificates, now),
        *judge_pins(chain, pinning, now.date()),
    ]


# Handshake failures as OpenSSL words them -> what they mean for a tester.
_PROTOCOL_FAILURE = re.compile(
    r"unsupported protocol|protocol version|wrong version number|no protocols available|version too low|"
    r"cannot agree on a TLS version",
    re.I,
)
_CIPHER_FAILURE = re.compile(
    r"no shared cipher|no ciphers available|handshake failure|no suitable signature|insufficient security", re.I
)


def judge_failure(
    error: str,
    verify_code: int | None,
    presented: Sequence[x509.Certificate],
    tls: TlsRules,
) -> Issue:
    """A failed upstream handshake in words; certificate failures keep OpenSSL's text as evidence."""
    evidence: dict[str, Any] = {"tls_error": error}
    if presented:
        evidence["chain"] = [{"role": c.role, "subject": c.subject, "pin": c.pin} for c in chain_pins(presented)]
    if verify_code in _WEAK_CRYPTO:
        kind, detail = _WEAK_CRYPTO[verify_code]
        evidence["verify_code"] = verify_code
        return Issue(
            "certificate",
            kind,
            True,
            "high",
            detail,
            evidence,
            "reissue the certificate with a 2048-bit RSA or P-256 key and a SHA-256 signature",
        )
    if "certificate verify failed" in error.lower() or (verify_code not in (None, 0)):
        failure = refine_with_chain(classify_verify_error(verify_code, error), presented)
        evidence.update({"failure": failure.name, "verify_code": failure.code, "openssl": failure.openssl_name})
        if failure.note:
            evidence["note"] = failure.note
        return Issue(
            "certificate",
            failure.name,
            True,
            "high",
            f"the server's certificate failed validation: {failure.sentence}",
            evidence,
            _CERT_REMEDY.get(failure.name, "fix the server's certificate"),
        )
    if "does not speak TLS" in error:
        return Issue(
            "tls",
            "not_tls",
            True,
            "high",
            "the server answered in plain text, not TLS, on a port the app uses for TLS",
            evidence,
            "check the port: the app expects TLS here",
        )
    if _PROTOCOL_FAILURE.search(error):
        return Issue(
            "protocol",
            "no_common_protocol",
            True,
            "high",
            f"no TLS handshake was possible: the server does not speak any protocol version tlsgate offered "
            f"(TLS {tls.min_version} or newer for this host); it likely only supports an obsolete version",
            evidence,
            "upgrade the server's TLS configuration, or lower tls.min_version / use mode: report for this legacy host",
        )
    if _CIPHER_FAILURE.search(error):
        return Issue(
            "cipher",
            "no_common_suite",
            True,
            "high",
            "no TLS handshake was possible: the server accepted none of the cipher suites tlsgate offered; it likely "
            "only speaks suites this TLS library no longer has (RC4, 3DES, DES, NULL or EXPORT), which are broken",
            evidence,
            "configure the server for modern AEAD suites (ECDHE with AES-GCM or ChaCha20-Poly1305)",
        )
    return Issue(
        "tls",
        "handshake_failed",
        True,
        "high",
        f"the TLS handshake with the server failed: {error}",
        evidence,
        "check that the server speaks TLS on this port",
    )


# OpenSSL's security level refuses these before tlsgate's own certificate rules see them.
_WEAK_CRYPTO = {
    66: ("weak_key", "the server's certificate key is too small (OpenSSL refuses RSA/DH keys below 2048 bits)"),
    67: ("weak_key", "a CA certificate in the server's chain has a key that is too small"),
    68: ("sha1_signature", "a certificate in the server's chain is signed with SHA-1 or MD5, which is broken"),
}

_CERT_REMEDY = {
    "expired": "renew the server's certificate",
    "not_yet_valid": "check the server's certificate dates and this machine's clock",
    "hostname_mismatch": "serve a certificate whose subjectAltName covers this host name",
    "self_signed": "serve a certificate from a trusted CA; for a staging CA start tlsgate with --upstream-ca",
    "unknown_issuer": "if this is a private or staging CA, pass it with --upstream-ca; otherwise the chain is not trusted",
    "incomplete_chain": "configure the server to send its intermediate certificate(s) with the leaf",
    "revoked": "replace the revoked certificate",
}


def evidence_for(protocol: str | None, cipher: str | None, chain: Sequence[x509.Certificate]) -> dict[str, Any]:
    """What every TLS finding carries, so a reader sees the connection, not only the complaint."""
    return {
        "negotiated_version": protocol,
        "negotiated_suite": cipher,
        "chain": [
            {k: v for k, v in item.items() if k in ("role", "subject", "issuer", "not_after", "pin", "key", "signature_hash")}
            for item in chain_summary(chain)
        ],
    }


def handshake_floor(tls: TlsRules, report_mode: bool) -> str | None:
    """The lowest TLS version this connection must be *able* to negotiate, when below mitmproxy's TLS 1.2.

    Report mode observes legacy servers instead of failing on them; an enforced
    rule that explicitly allows TLS 1.0/1.1 needs the same. Everything else keeps
    mitmproxy's own (stricter) upstream settings untouched.
    """
    if report_mode:
        return "1.0"
    return tls.min_version if version_below(tls.min_version, "1.2") else None
