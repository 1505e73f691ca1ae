"""The words every verdict is made of, and the one place an issue becomes blocked or reported.

Checks return `Issue`s; they never decide whether a request is stopped. That
depends on the host's mode and on what kind of issue it is, and it is decided
here only, so enforce/report behave the same for every check.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from tlsgate.policy.model import Match, Mode
from tlsgate.tls.severity import Severity

__all__ = ["Action", "Check", "Effect", "Issue", "Severity", "blocks", "decide", "remedy_for"]


class Check(enum.StrEnum):
    CLEARTEXT = "cleartext"
    PROTOCOL = "protocol"
    CIPHER = "cipher"
    CERTIFICATE = "certificate"
    PIN = "pin"
    REVOCATION = "revocation"  # the upstream's stapled OCSP response (`revocation:`)
    CT = "ct"  # Certificate Transparency: the SCTs a server's certificate embeds (`ct:`)
    TLS = "tls"
    CLIENT_PROTOCOL = "client_protocol"
    CLIENT_CIPHERS = "client_ciphers"
    CLIENT_SNI = "client_sni"
    CLIENT_TRUST = "client_trust"
    CLIENT_PROBE = "client_probe"
    CLIENT_HELLO = "client_hello"  # a hello the proxy would not wait for: flooded records, oversized, malformed
    QUIC = "quic"
    DESTINATION = "destination"
    REQUEST = "request"
    PAYLOAD = "payload"  # what a decrypted request carries: ECB, secrets, seeded identifiers
    FAULT = "fault"  # the network failed: nothing was judged, nothing could be forwarded
    CONFORMANCE = "conformance"  # traffic contradicts what the app itself declares (NSC / ATS, `app:`)
    PINNING = "pinning"  # the pinning assertion (`app.must_pin`): did the app refuse tlsgate's certificate?
    FALLBACK = "fallback"  # the app gave up encryption tlsgate took away: http:// retry after TLS failed, STARTTLS stripped


class Action(enum.StrEnum):
    BLOCKED = "blocked"
    REPORTED = "reported"
    PASSED = "passed"
    FAILED = "failed"  # a network fault, not a verdict: answered 502/504, never counted as a policy block


class Effect(enum.Enum):
    """What an issue may do to the traffic, before the host's mode is known."""

    ENFORCED = "blocks in enforce mode, reported in report mode"
    ALWAYS = "blocks in every mode"  # validation failures (report mode never loosens mitmproxy) and accepted probes
    RECORD = "never blocks"
    PASSED = "a test the client passed"
    FAULT = "the upstream failed (reset, timeout, not TLS): nothing can be forwarded, nothing was judged"


@dataclass(frozen=True)
class Issue:
    """One thing wrong (or worth knowing) about a connection or request, with what to change."""

    check: Check
    kind: str
    effect: Effect
    severity: Severity
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)
    remedy: str = ""

    @property
    def blocking(self) -> bool:
        """Whether this issue stops traffic when enforced (what a refusal in the handshake acts on)."""
        return self.effect in (Effect.ENFORCED, Effect.ALWAYS, Effect.FAULT)


def decide(issue: Issue, mode: Mode) -> Action:
    """Blocked, reported or passed: the same rule for every check."""
    if issue.effect is Effect.PASSED:
        return Action.PASSED
    if issue.effect is Effect.FAULT:
        return Action.FAILED
    if issue.effect is Effect.ALWAYS or (issue.effect is Effect.ENFORCED and mode is Mode.ENFORCE):
        return Action.BLOCKED
    return Action.REPORTED


def blocks(issues: list[Issue], mode: Mode) -> bool:
    """Whether traffic must stop: a verdict blocked it, or the upstream failed."""
    return any(decide(issue, mode) in (Action.BLOCKED, Action.FAILED) for issue in issues)


def remedy_for(match: Match, setting: str) -> str:
    """Where to write `setting` so this host is treated differently: the rule that matched, or a new one."""
    if match.rule is not None:
        return f"set '{setting}' in the rule at {match.rule_ref}"
    return f"add a rule with hosts: [{match.host}] and '{setting}' (the defaults at {match.rule_ref} apply now)"
