"""Upstream TLS verdicts from plain facts: negotiated version and suite, the chain, the rules.

The add-on gathers `HandshakeFacts` from OpenSSL mid-handshake (in the
certificate verify callback, where version and suite are already negotiated)
and applies the verdict; everything here is pure so each case is a one-line
unit test. The judges below are registered for the chain phase
(`tlsgate.checks.registry`), in the order users fix them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tlsgate.checks.certificates import check_chain
from tlsgate.checks.faults import timeout_from_text
from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.checks.registry import HandshakeFacts, Phase, issues_of, run, upstream_judge
from tlsgate.policy.model import Match
from tlsgate.policy.sections.certificates import CERTIFICATES, CertRules
from tlsgate.policy.sections.pins import PINS, Pinning
from tlsgate.policy.sections.tls import TLS, TlsRules
from tlsgate.tls import versions
from tlsgate.tls.certcheck import chain_summary, classify_verify_error, public_key_or_none, refine_with_chain
from tlsgate.tls.ciphers import WEAKNESS_LABELS, lookup, weakness_reasons
from tlsgate.tls.pins import chain_pins

__all__ = ["HandshakeFacts"]  # defined with the registry; imported from here by older code


def judge_protocol(protocol: str | None, rules: TlsRules) -> list[Issue]:
    version = versions.from_openssl(protocol)
    if not versions.below(version, rules.min_version):
        return []
    return [
        Issue(
            Check.PROTOCOL,
            "version_too_low",
            Effect.ENFORCED,
            Severity.HIGH,
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
                Check.CIPHER,
                "unknown_suite",
                Effect.RECORD,
                Severity.LOW,
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
                Check.CIPHER,
                "weak_suite_allowed",
                Effect.RECORD,
                Severity.LOW,
                f"negotiated {suite.iana_name}, allowed by the policy but weak ({labels}). {why}",
                evidence,
            )
        ]
    policy_reasons = [r for r in reasons if r not in weakness_reasons(suite)]
    weak = f" Weak: {labels}. {why}" if labels else ""
    return [
        Issue(
            Check.CIPHER,
            "weak_suite",
            Effect.ENFORCED,
            Severity.HIGH,
            f"negotiated {suite.iana_name} ({suite.openssl_name}), refused by the policy ({'; '.join(policy_reasons)}).{weak}",
            evidence,
            "configure the server for forward-secret AEAD suites (Mozilla 'intermediate'), or change tls.ciphers for this host",
        )
    ]


def judge_certificates(chain: Sequence[x509.Certificate], rules: CertRules, now: dt.datetime) -> list[Issue]:
    issues = []
    for cert_issue in check_chain(chain, rules, now):
        issues.append(
            Issue(
                Check.CERTIFICATE,
                cert_issue.kind,
                Effect.ENFORCED if cert_issue.blocking else Effect.RECORD,
                Severity.HIGH if cert_issue.blocking else Severity.MEDIUM,
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
                Check.PIN,
                "pin_set_expired",
                Effect.RECORD,
                Severity.MEDIUM,
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
            Check.PIN,
            "pin_mismatch",
            Effect.ENFORCED,
            Severity.CRITICAL,
            f"no certificate in the server's chain matches pin set '{pin_set.name}': {match.message()}",
            evidence,
            f"if the server's key changed on purpose, add one of the chain's pins to pin set '{pin_set.name}' at {where}; "
            "otherwise something between tlsgate and the server is presenting another certificate",
        )
    ]


# The chain phase's judges, registered in the order users fix them (and findings list them).


@upstream_judge(Phase.CHAIN, TLS, name="protocol")
def protocol_judge(facts: HandshakeFacts, rules: TlsRules, match: Match, now: dt.datetime) -> list[Issue]:
    return judge_protocol(facts.protocol, rules)


@upstream_judge(Phase.CHAIN, TLS, name="cipher")
def cipher_judge(facts: HandshakeFacts, rules: TlsRules, match: Match, now: dt.datetime) -> list[Issue] | None:
    """TLS 1.2 names its suite only once the handshake is done (pyOpenSSL has no SSL_get_pending_cipher): judged then."""
    return None if facts.cipher is None else judge_cipher(facts.cipher, rules)


@upstream_judge(Phase.CHAIN, CERTIFICATES, name="certificates")
def certificates_judge(facts: HandshakeFacts, rules: CertRules, match: Match, now: dt.datetime) -> list[Issue]:
    return judge_certificates(facts.chain, rules, now)


@upstream_judge(Phase.CHAIN, PINS, name="pins")
def pins_judge(facts: HandshakeFacts, pinning: Pinning, match: Match, now: dt.datetime) -> list[Issue]:
    return judge_pins(facts.chain, pinning, now.date())


def judge_handshake(facts: HandshakeFacts, match: Match, now: dt.datetime) -> list[Issue]:
    """Everything known once the server's certificate has been received: the chain phase's judges, in order."""
    return issues_of(run(Phase.CHAIN, facts, match, now).found)


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
        kind = _weak_key_kind(kind, verify_code, presented)
        evidence["verify_code"] = verify_code
        return Issue(
            Check.CERTIFICATE,
            kind,
            Effect.ALWAYS,
            Severity.HIGH,
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
            Check.CERTIFICATE,
            failure.name,
            Effect.ALWAYS,
            Severity.HIGH,
            f"the server's certificate failed validation: {failure.sentence}",
            evidence,
            _CERT_REMEDY.get(failure.name, "fix the server's certificate"),
        )
    timed_out = timeout_from_text(error)  # tlsgate's own handshake clock (tlsgate.addons.upstream_timeouts) ran out
    if timed_out is not None:
        return timed_out
    if "does not speak TLS" in error:
        return Issue(
            Check.FAULT,
            "not_tls",
            Effect.FAULT,
            Severity.LOW,
            "the server answered in plain text, not TLS, on a port the app uses for TLS",
            evidence,
            "check the port: the app expects TLS here",
        )
    fault = next((kind for kind, pattern in _FAULTS if pattern.search(error)), None)
    if fault is not None:
        return Issue(
            Check.FAULT,
            fault,
            Effect.FAULT,
            Severity.LOW,
            f"the connection to the server failed ({_FAULT_WORDS[fault]}): {error}",
            evidence,
            "a network fault, not a policy verdict: check that the server is up and reachable from tlsgate",
        )
    if _PROTOCOL_FAILURE.search(error):
        return Issue(
            Check.PROTOCOL,
            "no_common_protocol",
            Effect.ALWAYS,
            Severity.HIGH,
            f"no TLS handshake was possible: the server does not speak any protocol version tlsgate offered "
            f"(TLS {tls.min_version} or newer for this host); it likely only supports an obsolete version",
            evidence,
            "upgrade the server's TLS configuration, or lower tls.min_version / use mode: report for this legacy host",
        )
    if _CIPHER_FAILURE.search(error):
        return Issue(
            Check.CIPHER,
            "no_common_suite",
            Effect.ALWAYS,
            Severity.HIGH,
            "no TLS handshake was possible: the server accepted none of the cipher suites tlsgate offered; it likely "
            "only speaks suites this TLS library no longer has (RC4, 3DES, DES, NULL or EXPORT), which are broken",
            evidence,
            "configure the server for modern AEAD suites (ECDHE with AES-GCM or ChaCha20-Poly1305)",
        )
    return Issue(
        Check.TLS,
        "handshake_failed",
        Effect.ALWAYS,
        Severity.HIGH,
        f"the TLS handshake with the server failed: {error}",
        evidence,
        "check that the server speaks TLS on this port",
    )


# Network faults during the upstream handshake: the server (or the path to it) failed; no policy decided it.
_FAULTS = (
    ("timeout", re.compile(r"timed? ?out|timeout", re.IGNORECASE)),
    ("reset", re.compile(r"reset|ECONNRESET|broken pipe", re.IGNORECASE)),
    ("refused", re.compile(r"refused|unreachable|no route", re.IGNORECASE)),
    ("closed", re.compile(r"unexpected eof|eof occurred|connection closed|closed by (the )?(peer|server)|\bEOF\b", re.I)),
)
_FAULT_WORDS = {
    "timeout": "it stopped answering",
    "reset": "it reset the connection",
    "refused": "it refused the connection or could not be reached",
    "closed": "it closed the connection mid-handshake",
}

# OpenSSL's security level refuses these before tlsgate's own certificate rules see them.
_WEAK_CRYPTO = {
    66: ("weak_key", "the server's certificate key is too small (OpenSSL refuses RSA/DH keys below 2048 bits)"),
    67: ("weak_key", "a CA certificate in the server's chain has a key that is too small"),
    68: ("sha1_signature", "a certificate in the server's chain is signed with SHA-1 or MD5, which is broken"),
}


def _weak_key_kind(kind: str, verify_code: int, presented: Sequence[x509.Certificate]) -> str:
    """Name a key OpenSSL refused as small the way the certificate rules name it (weak_rsa_key, weak_ec_key),
    so one server gets one finding kind in enforce and report mode alike."""
    if kind != "weak_key" or not presented:
        return kind
    index = 0 if verify_code == 66 else min(1, len(presented) - 1)
    key = public_key_or_none(presented[index])
    if isinstance(key, rsa.RSAPublicKey):
        return "weak_rsa_key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "weak_ec_key"
    return kind


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
    return tls.min_version if versions.below(tls.min_version, "1.2") else None
