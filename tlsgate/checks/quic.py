"""QUIC verdicts: whether a QUIC connection may run at all, and its handshake facts in TCP's words.

QUIC always carries TLS 1.3 (RFC 9001), with aioquic naming suites without the
`TLS_` prefix and the version "QUICv1"; translated here, the upstream checks
(`tlsgate.checks.upstream`) judge a QUIC handshake exactly as a TCP one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cryptography import x509

from tlsgate.checks.model import Check, Effect, Issue, Severity, remedy_for
from tlsgate.checks.upstream import HandshakeFacts
from tlsgate.policy.model import Match, Mode
from tlsgate.policy.sections.quic import QUIC, Quic
from tlsgate.tls.transport import TRANSPORT_QUIC

# What QUIC negotiates, in OpenSSL's words (the ones HandshakeFacts.protocol holds for TCP).
QUIC_PROTOCOL = "TLSv1.3"
# aioquic's failure words for a certificate it would not accept; its reason phrase carries OpenSSL's text after them.
_CERT_FAILURE_MARKERS = ("certificate", "verify", "issuer", "self-signed", "self signed", "hostname", "expired")


def quic_setting(match: Match) -> Quic:
    """The host's `quic:` value (refuse by default)."""
    return QUIC.of(match.settings)


def refuses(match: Match) -> bool:
    """Whether this host's QUIC connections are refused now: only `quic: refuse` in enforce mode.

    In report mode a refusal is recorded, not applied: the connection is
    inspected instead, with every check recording what it would have blocked.
    """
    return quic_setting(match) is Quic.REFUSE and match.settings.mode is Mode.ENFORCE


def quic_refused(match: Match, alpn: Sequence[str]) -> Issue:
    """The finding for a refused (or, in report mode, would-be-refused) QUIC connection."""
    return Issue(
        Check.QUIC,
        "quic_refused",
        Effect.ENFORCED,
        Severity.LOW,
        f"the app tried QUIC (HTTP/3) to {match.host}; the policy refuses QUIC for this host (quic: refuse) so that "
        "the app falls back to TCP, where every check runs (an app that never falls back stays offline)",
        {"transport": TRANSPORT_QUIC, "alpn_offered": list(alpn)[:8]},
        remedy_for(match, "quic: inspect") + " to have tlsgate terminate QUIC and judge it like TCP",
    )


def suite_name(cipher: str | None) -> str | None:
    """aioquic's suite name ("AES_128_GCM_SHA256") as IANA spells it ("TLS_AES_128_GCM_SHA256")."""
    if not cipher:
        return None
    return cipher if cipher.upper().startswith("TLS_") else f"TLS_{cipher}"


def quic_facts(cipher: str | None, chain: Sequence[x509.Certificate]) -> HandshakeFacts:
    """A completed QUIC handshake as `judge_handshake` reads facts; the chain is as presented, leaf first."""
    return HandshakeFacts(protocol=QUIC_PROTOCOL, cipher=suite_name(cipher), chain=list(chain))


def quic_failure_text(error: str | None) -> str:
    """aioquic's reason for a failed handshake, worded so `judge_failure` classifies it as OpenSSL's would be.

    aioquic reports a certificate it refused with OpenSSL's verify text but
    without OpenSSL's "certificate verify failed" prefix, which is what marks a
    validation failure for `judge_failure`.
    """
    text = error or "QUIC handshake failed"
    lowered = text.lower()
    if "certificate verify failed" not in lowered and any(m in lowered for m in _CERT_FAILURE_MARKERS):
        return f"certificate verify failed: {text}"
    return text


# TLS alerts (RFC 8446 6.2) a QUIC peer sends as CRYPTO_ERROR 0x100 + alert when it refuses a certificate.
_CERTIFICATE_ALERT_NAMES = {
    42: "bad certificate",
    43: "unsupported certificate",
    44: "certificate revoked",
    45: "certificate expired",
    46: "certificate unknown",
    48: "unknown ca",
}
_UNKNOWN_CODE = re.compile(r"unknown error \(0x([0-9a-f]+)\)", re.I)


def quic_client_error(error: str | None) -> str | None:
    """Why a QUIC client ended the handshake, in the alert words `tlsgate.checks.probes.client_rejection` reads.

    mitmproxy keeps the client's CONNECTION_CLOSE reason phrase, or, without
    one, the error code as "unknown error (0x12a)": a CRYPTO_ERROR carrying TLS
    alert 42 (bad certificate). A QUIC stack that refuses a certificate puts its
    verifier's words in the phrase ("unable to get local issuer certificate"),
    which is the same refusal as a "bad certificate" alert on TCP.
    """
    if not error:
        return error
    code = _UNKNOWN_CODE.search(error)
    if code is not None:
        value = int(code.group(1), 16)
        alert = _CERTIFICATE_ALERT_NAMES.get(value - 0x100) if 0x100 <= value <= 0x1FF else None
        return f"{alert} ({error})" if alert else error
    lowered = error.lower()
    if any(name in lowered for name in _CERTIFICATE_ALERT_NAMES.values()):
        return error
    if any(m in lowered for m in _CERT_FAILURE_MARKERS):
        return f"bad certificate ({error})"
    return error
