"""The `revocation` check: what a host's stapled OCSP response (or its absence) means under its `revocation:` rules.

Only an authentic, current answer about the very certificate counts
(`tlsgate.tls.ocsp`); a response that proves nothing is judged like no
response at all, so a server cannot pass `stapling: require` with a stale,
foreign or forged staple, and a forged `revoked` cannot get a server blocked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509

from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.checks.registry import HandshakeFacts, Phase, upstream_judge
from tlsgate.policy.model import Match
from tlsgate.policy.sections.revocation import REVOCATION, RevocationRules, Revoked, Stapling
from tlsgate.tls.ocsp import Outcome, Staple, must_staple, read_staple

# What to do about a response that proves nothing, by why it proves nothing.
_FIX = {
    Outcome.ABSENT: "enable OCSP stapling on the server (nginx: ssl_stapling on; Apache: SSLUseStapling on; "
    "HAProxy: ocsp-update on)",
    Outcome.UNKNOWN: "the CA's responder does not know this certificate: check that the server staples the response "
    "of the CA that issued it",
    Outcome.EXPIRED: "the server staples an old response: check that it can reach its CA's OCSP responder to refresh it",
    Outcome.NOT_YET_VALID: "check this machine's clock and the server's",
}
_FIX_INVALID = "make the server staple its CA's current response for this certificate (its stapling cache may hold a "
_FIX_INVALID += "broken or foreign one)"


@upstream_judge(
    Phase.STAPLED,
    REVOCATION,
    name="revocation",
    check=Check.REVOCATION,
    failure="tlsgate could not check this server's stapled OCSP response (see log)",
)
def revocation_judge(facts: HandshakeFacts, rules: RevocationRules, match: Match, now: dt.datetime) -> list[Issue]:
    """Runs only where `revocation:` is set (report or require): only there is a staple asked for."""
    return judge_revocation(facts.stapled_ocsp, facts.chain, rules, now)


def judge_revocation(
    stapled: bytes | None, chain: Sequence[x509.Certificate], rules: RevocationRules, now: dt.datetime
) -> list[Issue]:
    """`stapled`: what the handshake stapled (b"": nothing), or None when no staple could be asked for."""
    if not rules.asks:
        return []
    demanded = bool(chain) and must_staple(chain[0])
    if stapled is None:
        return [_not_asked(rules, demanded)]
    return judge_staple(read_staple(stapled, chain, now), rules, demanded)


def judge_staple(staple: Staple, rules: RevocationRules, demanded: bool = False) -> list[Issue]:
    """Issues for one judged staple; `demanded`: the leaf carries OCSP Must-Staple (RFC 7633)."""
    if not rules.asks or staple.outcome is Outcome.GOOD:
        return []
    evidence = {
        **staple.evidence(),
        "stapling": str(rules.stapling),
        "must_staple": demanded,
        "revocation_rule": rules.where,
    }
    if staple.outcome is Outcome.REVOKED:
        blocking = rules.revoked is Revoked.BLOCK
        other = "report" if blocking else "block"
        return [
            Issue(
                Check.REVOCATION,
                "revoked",
                Effect.ENFORCED if blocking else Effect.RECORD,
                Severity.CRITICAL,
                staple.detail,
                evidence,
                f"the server needs a new certificate (its CA revoked this one); revocation.revoked: {other} "
                f"at {rules.where} changes what a revoked staple does",
            )
        ]
    required = rules.stapling is Stapling.REQUIRE
    kind = {Outcome.ABSENT: "staple_missing", Outcome.UNKNOWN: "staple_unknown"}.get(staple.outcome, "staple_invalid")
    detail = staple.detail
    if demanded:
        detail += "; the certificate itself demands one (OCSP Must-Staple), so browsers refuse this server"
    quiet = Severity.LOW if staple.outcome is Outcome.ABSENT else Severity.MEDIUM
    severity = Severity.HIGH if required or demanded else quiet
    remedy = _FIX.get(staple.outcome, _FIX_INVALID)
    if required:
        remedy += f"; or set revocation.stapling: report at {rules.where} to record instead of refusing"
    return [Issue(Check.REVOCATION, kind, Effect.ENFORCED if required else Effect.RECORD, severity, detail, evidence, remedy)]


def _not_asked(rules: RevocationRules, demanded: bool) -> Issue:
    """A QUIC upstream (aioquic sends no status_request) or a resumed session: nothing to judge, and that is said."""
    required = rules.stapling is Stapling.REQUIRE
    return Issue(
        Check.REVOCATION,
        "staple_not_requested",
        Effect.ENFORCED if required else Effect.RECORD,
        Severity.HIGH if required or demanded else Severity.LOW,
        "tlsgate could not ask this server for a stapled OCSP response (over QUIC, aioquic has no status_request; "
        "a resumed TLS session carries none), so revocation could not be checked",
        {"stapling": str(rules.stapling), "must_staple": demanded, "revocation_rule": rules.where},
        "set quic: refuse for this host so the app uses TCP, where the stapled response is checked"
        + (f"; or set revocation.stapling: report at {rules.where}" if required else ""),
    )
