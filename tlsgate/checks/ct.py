"""`ct:` verdicts: does the server's certificate embed enough SCTs, from distinct logs and operators, that verify?

Counting follows Chrome's CT policy for embedded SCTs, which Android 16 and
Apple apply too: one SCT per log counts, only from logs the log list trusts
at the SCT's time, and `by_lifetime` asks 2 of a certificate valid up to 180
days and 3 beyond. What it does not follow is said in the README.

A log list older than Chrome's ten weeks decides nothing: Chrome stops
enforcing rather than refuse servers whose logs it does not know yet, and so
does this check (its findings are recorded, never blocking, and say why).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from cryptography import x509

from tlsgate.checks.model import Check, Effect, Issue, Severity, remedy_for
from tlsgate.checks.registry import HandshakeFacts, Phase, upstream_judge
from tlsgate.policy.model import Match
from tlsgate.policy.sections.ct import CT, CtRules
from tlsgate.tls.ct import CtFacts, SctResult, SctStatus, examine
from tlsgate.tls.ctlogs import STALE_AFTER, LogList, shipped_log_list

LIFETIME_SPLIT = dt.timedelta(days=180)

_WORDS = {
    SctStatus.VALID: "verifies",
    SctStatus.UNVERIFIED: "counted without checking its signature (ct.verify: false)",
    SctStatus.UNKNOWN_LOG: "from a log the log list does not know",
    SctStatus.BAD_SIGNATURE: "its signature does not verify with the log's key",
    SctStatus.FUTURE_TIMESTAMP: "dated after tlsgate's clock",
    SctStatus.NO_ISSUER: "cannot be checked: the chain does not hold the leaf's issuer",
}


def required_scts(rules: CtRules, leaf: x509.Certificate) -> int:
    if rules.min_scts is not None:
        return rules.min_scts
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    return 2 if lifetime <= LIFETIME_SPLIT else 3


def _describe(sct: SctResult) -> str:
    if sct.log:
        who = sct.log
    elif sct.log_id:
        who = f"log ID {sct.log_id[:12]}..."
    else:
        who = "unreadable"
    return f"SCT {sct.index} ({who}): {_WORDS.get(sct.status) or sct.note or sct.status}"


def _counted(facts: CtFacts) -> dict[str, SctResult]:
    """One SCT per log: a CA that embeds two from the same log has one log's word, not two."""
    out: dict[str, SctResult] = {}
    for sct in facts.counting:
        out.setdefault(sct.log_id, sct)
    return out


def _evidence(
    facts: CtFacts, rules: CtRules, needed: int, counted: dict[str, SctResult], logs: LogList, now: dt.datetime
) -> dict[str, Any]:
    evidence: dict[str, Any] = {
        "required": needed,
        "counted": len(counted),
        "operators": sorted({s.operator for s in counted.values() if s.operator}),
        "scts": [s.as_evidence() for s in facts.scts],
        "policy": {
            "min_scts": rules.min_scts if rules.min_scts is not None else "by_lifetime",
            "distinct_operators": rules.distinct_operators,
            "verify": rules.verify,
        },
        "log_list": logs.summary(now),
    }
    if facts.error:
        evidence["sct_list_error"] = facts.error
    if facts.ignored:
        evidence["scts_not_read"] = facts.ignored
    return evidence


@upstream_judge(Phase.CHAIN, CT, check=Check.CT, failure="tlsgate could not check this server's SCTs (see log)")
def ct_judge(facts: HandshakeFacts, rules: CtRules, match: Match, now: dt.datetime) -> list[Issue]:
    """The chain phase: embedded SCTs are in the leaf, and the issuer whose key they are bound to is in the chain."""
    return judge_ct(facts.chain, rules, match, now, rules.logs or shipped_log_list())


def judge_ct(chain: Sequence[x509.Certificate], rules: CtRules, match: Match, now: dt.datetime, logs: LogList) -> list[Issue]:
    """Findings for the leaf's SCTs under the host's `ct:` rules, judged against `logs`."""
    if not chain:
        return []
    facts = examine(chain, logs, now, verify=rules.verify)
    needed = required_scts(rules, chain[0])
    counted = _counted(facts)
    evidence = _evidence(facts, rules, needed, counted, logs, now)
    stale = logs.stale(now)
    effect, severity = (Effect.RECORD, Severity.MEDIUM) if stale else (Effect.ENFORCED, Severity.HIGH)
    unless = ""
    if stale:
        unless = (
            f" Not enforced: the CT log list ({logs.source}, published {logs.published.date().isoformat()}) is "
            f"{logs.age(now).days} days old, and like Chrome tlsgate does not enforce CT with a list older than "
            f"{STALE_AFTER.days} days."
        )
    issues: list[Issue] = []
    by_lifetime = " by the certificate's lifetime" if rules.min_scts is None else ""
    listed = "; ".join(_describe(s) for s in facts.scts) or facts.error or ""
    refresh = ""
    if stale or any(s.status is SctStatus.UNKNOWN_LOG for s in facts.scts):
        refresh = "; if its logs are newer than tlsgate's log list, name a current one in the policy (ct_log_list: FILE)"
    operators = " of two operators" if rules.distinct_operators else ""
    fix = f"have the CA embed SCTs from {needed} logs{operators} the log list trusts (reissue the certificate){refresh}"
    remedy = f"{fix}; or {remedy_for(match, 'ct: off')}"
    if len(counted) < needed:
        if not facts.present:
            kind, detail = "no_scts", f"the server's certificate embeds no SCTs; ct.min_scts{by_lifetime} requires {needed}"
            detail += " (tlsgate reads embedded SCTs only, not SCTs sent in the TLS extension or a stapled OCSP response)"
        else:
            have = f"{len(counted)} SCT{'s' if len(counted) != 1 else ''} from distinct trusted logs"
            detail = f"the server's certificate embeds {have}; ct.min_scts{by_lifetime} requires {needed}"
            kind, detail = "too_few_scts", f"{detail}: {listed}" if listed else detail
        issues.append(Issue(Check.CT, kind, effect, severity, detail + unless, evidence, remedy))
    elif rules.distinct_operators and len(evidence["operators"]) < 2:
        operator = evidence["operators"][0] if evidence["operators"] else "one operator"
        detail = f"all {len(counted)} counted SCTs come from logs run by {operator}; ct.distinct_operators asks for two operators"
        issues.append(Issue(Check.CT, "one_operator", effect, severity, detail + unless, evidence, remedy))
    elif all(s.retired for s in counted.values()):
        detail = (
            f"all {len(counted)} counted SCTs come from logs that have retired since; Chrome also asks for one from a "
            "log still qualified, usable or read-only"
        )
        issues.append(Issue(Check.CT, "retired_logs_only", effect, severity, detail + unless, evidence, remedy))
    forged = [s for s in facts.scts if s.status is SctStatus.BAD_SIGNATURE]
    if forged:
        names = ", ".join(f"SCT {s.index} ({s.log})" for s in forged)
        detail = f"{names} names a log whose key does not verify it for this certificate (not counted)"
        issues.append(
            Issue(
                Check.CT,
                "invalid_sct",
                Effect.RECORD,
                Severity.MEDIUM,
                detail,
                evidence,
                "an SCT that does not verify was altered or issued for another certificate; ask the CA to reissue",
            )
        )
    return issues
