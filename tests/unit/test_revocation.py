"""The `revocation:` section and the `revocation` check: parsing with located errors, and each staple's verdict."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from cryptography import x509

from tests.certgen import Chain, make_chain, make_leaf, utcnow
from tests.ocsplab import make_responder, ocsp_response, tampered, unsuccessful
from tlsgate.checks import registry
from tlsgate.checks.model import Action, Check, Effect, Severity, decide
from tlsgate.checks.registry import HandshakeFacts, Phase
from tlsgate.checks.revocation import judge_revocation, judge_staple
from tlsgate.policy import Mode, PolicyError, load_texts
from tlsgate.policy.model import Match
from tlsgate.policy.sections.revocation import REVOCATION, RevocationRules, Revoked, Stapling
from tlsgate.tls.ocsp import Outcome, Staple

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "policies" / "tlsgate-policy.schema.json").read_text())

POLICY = """\
version: 1
defaults:
  revocation:
    stapling: require
rules:
  - hosts: legacy.test
    revocation: report
  - hosts: tolerant.test
    revocation: {stapling: require, revoked: report}
  - hosts: off.test
    revocation: off
  - hosts: tls-only.test
    tls: {min_version: "1.3"}
  - hosts: watch.test
    mode: report
"""


def match(text: str, host: str) -> Match:
    return load_texts([("p.yaml", text)]).match(host)


def rules_of(text: str, host: str) -> RevocationRules | None:
    return REVOCATION.get(match(text, host).settings)


def set_rules(text: str, host: str) -> RevocationRules:
    rules = rules_of(text, host)
    assert rules is not None
    return rules


def stapled(data: bytes | None, chain: Chain, text: str, host: str, now: dt.datetime) -> list:
    """The stapled phase as the add-on runs it: every registered judge whose section is set for the host."""
    facts = HandshakeFacts(protocol="TLSv1.3", chain=list(chain.certs), stapled_ocsp=data)
    return registry.issues_of(registry.run(Phase.STAPLED, facts, match(text, host), now).found)


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_texts([("p.yaml", text)])
    return [str(m) for m in caught.value.messages]


# -- the section ------------------------------------------------------------------------------------


def test_without_a_section_nothing_is_asked() -> None:
    assert rules_of("version: 1\n", "any.test") is None
    assert not registry.wanted(Phase.STAPLED, match("version: 1\n", "any.test"))  # the hello stays mitmproxy's
    assert registry.wanted(Phase.STAPLED, match(POLICY, "any.test"))


def test_forms_and_where_each_was_written() -> None:
    defaults = set_rules(POLICY, "other.test")
    assert (defaults.stapling, defaults.revoked, defaults.where) == (Stapling.REQUIRE, Revoked.BLOCK, "p.yaml:4")
    legacy = set_rules(POLICY, "legacy.test")
    assert (legacy.stapling, legacy.revoked, legacy.where) == (Stapling.REPORT, Revoked.BLOCK, "p.yaml:7")
    tolerant = set_rules(POLICY, "tolerant.test")
    assert (tolerant.stapling, tolerant.revoked) == (Stapling.REQUIRE, Revoked.REPORT)
    # `off` is no value at all: a rule's off drops the defaults' rules, and nothing is asked. YAML reads a bare off as false.
    assert rules_of(POLICY, "off.test") is None and not registry.wanted(Phase.STAPLED, match(POLICY, "off.test"))
    assert rules_of("defaults:\n  revocation: 'off'\n", "a.test") is None


def test_a_rule_that_changes_another_section_keeps_the_defaults_requirement() -> None:
    """Why revocation is a section of its own: a rule's tls: replaces the defaults' tls: whole."""
    assert set_rules(POLICY, "tls-only.test").stapling is Stapling.REQUIRE
    assert set_rules(POLICY, "watch.test").stapling is Stapling.REQUIRE


def test_a_mapping_without_stapling_asks_and_records() -> None:
    rules = set_rules("defaults:\n  revocation: {revoked: report}\n", "a.test")
    assert (rules.stapling, rules.revoked) == (Stapling.REPORT, Revoked.REPORT)


# (value as written, the words of its error, column)
HOSTILE = {
    "unknown word": ("maybe", "defaults.revocation must be one of off, report, require, not 'maybe'"),
    "true": ("true", "not True"),
    "number": ("3", "not 3"),
    "empty": ("", "not None"),
    "list": ("[require]", "must be off, report or require, or a mapping with stapling/revoked, not a list"),
    "empty mapping": ("{}", "defaults.revocation is empty: write stapling"),
    "unknown key": ("{staple: require}", "unknown key 'staple' in defaults.revocation; did you mean 'stapling'?"),
    "bad stapling": ("{stapling: block}", "defaults.revocation.stapling must be one of off, report, require, not 'block'"),
    "bad revoked": ("{revoked: off}", "defaults.revocation.revoked must be one of block, report, not False"),
    "nested": ("{stapling: {require: true}}", "defaults.revocation.stapling must be one of off, report, require, not a mapping"),
    "long text": ("x" * 5000, "must be one of off, report, require, not a 5000-character text"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_values_are_refused_where_written(name: str) -> None:
    value, words = HOSTILE[name]
    text = f"version: 1\ndefaults:\n  revocation: {value}\n"
    (message,) = errors_of(text)
    assert message.startswith("p.yaml:3:"), message
    assert words in message, message
    assert len(message) < 300
    with pytest.raises(jsonschema.ValidationError):  # editors flag it too
        jsonschema.validate(yaml.safe_load(text), SCHEMA)


def test_a_rules_error_names_the_rule_line() -> None:
    (message,) = errors_of("version: 1\nrules:\n  - hosts: a.test\n    revocation: {stapling: nope}\n")
    assert message.startswith("p.yaml:4:") and "rule.revocation.stapling" in message


@pytest.mark.parametrize(
    "value", ["require", "report", "off", "'off'", "{stapling: require}", "{revoked: report}", "{stapling: off, revoked: block}"]
)
def test_what_the_loader_takes_the_schema_takes(value: str) -> None:
    text = f"version: 1\ndefaults:\n  revocation: {value}\nrules:\n  - hosts: a.test\n    revocation: {value}\n"
    load_texts([("p.yaml", text)])
    jsonschema.validate(yaml.safe_load(text), SCHEMA)


# -- the check --------------------------------------------------------------------------------------

REQUIRE = RevocationRules(Stapling.REQUIRE)
REPORT = RevocationRules(Stapling.REPORT)


def staple(outcome: Outcome) -> Staple:
    return Staple(outcome, f"the staple is {outcome}", 100)


def test_good_passes_silently() -> None:
    assert judge_staple(staple(Outcome.GOOD), REQUIRE) == []


def test_off_judges_nothing_even_a_revoked_staple() -> None:
    assert judge_staple(staple(Outcome.REVOKED), RevocationRules()) == []


@pytest.mark.parametrize(
    ("revoked", "effect", "enforce", "report"),
    [
        (Revoked.BLOCK, Effect.ENFORCED, Action.BLOCKED, Action.REPORTED),
        (Revoked.REPORT, Effect.RECORD, Action.REPORTED, Action.REPORTED),
    ],
)
@pytest.mark.parametrize("stapling", [Stapling.REPORT, Stapling.REQUIRE])
def test_revoked_blocks_or_reports_as_the_rule_says(
    stapling: Stapling, revoked: Revoked, effect: Effect, enforce: Action, report: Action
) -> None:
    (issue,) = judge_staple(staple(Outcome.REVOKED), RevocationRules(stapling, revoked))
    assert (issue.check, issue.kind, issue.effect, issue.severity) == (Check.REVOCATION, "revoked", effect, Severity.CRITICAL)
    assert (decide(issue, Mode.ENFORCE), decide(issue, Mode.REPORT)) == (enforce, report)
    other = "report" if revoked is Revoked.BLOCK else "block"
    assert f"revocation.revoked: {other}" in issue.remedy


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        (Outcome.ABSENT, "staple_missing"),
        (Outcome.UNKNOWN, "staple_unknown"),
        (Outcome.MALFORMED, "staple_invalid"),
        (Outcome.TOO_LARGE, "staple_invalid"),
        (Outcome.UNSUCCESSFUL, "staple_invalid"),
        (Outcome.NO_ISSUER, "staple_invalid"),
        (Outcome.WRONG_CERTIFICATE, "staple_invalid"),
        (Outcome.BAD_SIGNATURE, "staple_invalid"),
        (Outcome.EXPIRED, "staple_invalid"),
        (Outcome.NOT_YET_VALID, "staple_invalid"),
    ],
)
def test_a_staple_that_proves_nothing_is_refused_under_require_and_recorded_under_report(outcome: Outcome, kind: str) -> None:
    located = set_rules(POLICY, "api.test")
    (required,) = judge_staple(staple(outcome), located)
    assert (required.kind, required.effect, required.severity) == (kind, Effect.ENFORCED, Severity.HIGH)
    assert decide(required, Mode.ENFORCE) is Action.BLOCKED and decide(required, Mode.REPORT) is Action.REPORTED
    assert "revocation.stapling: report at p.yaml:4" in required.remedy
    assert required.evidence["staple"] == str(outcome) and required.evidence["revocation_rule"] == "p.yaml:4"
    (recorded,) = judge_staple(staple(outcome), REPORT)
    assert (recorded.kind, recorded.effect) == (kind, Effect.RECORD)
    assert recorded.severity is (Severity.LOW if outcome is Outcome.ABSENT else Severity.MEDIUM)
    assert decide(recorded, Mode.ENFORCE) is Action.REPORTED


def test_must_staple_raises_the_severity_and_says_why() -> None:
    (issue,) = judge_staple(staple(Outcome.ABSENT), REPORT, demanded=True)
    assert issue.effect is Effect.RECORD and issue.severity is Severity.HIGH
    assert "OCSP Must-Staple" in issue.detail and issue.evidence["must_staple"] is True


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain(dns=("api.test",))


def test_from_bytes_to_verdict_through_the_registry(chain: Chain) -> None:
    now = utcnow()
    assert stapled(ocsp_response(chain.leaf, chain.intermediate), chain, POLICY, "api.test", now) == []
    revoked = ocsp_response(chain.leaf, chain.intermediate, status="revoked", reason=x509.ReasonFlags.key_compromise)
    (issue,) = stapled(revoked, chain, POLICY, "api.test", now)
    assert (issue.check, issue.kind, issue.evidence["revocation_reason"]) == (Check.REVOCATION, "revoked", "key_compromise")
    responder = make_responder(chain.intermediate)
    delegated = ocsp_response(chain.leaf, chain.intermediate, signer=responder, carry=[responder.cert])
    assert stapled(delegated, chain, POLICY, "api.test", now) == []
    for proves_nothing in (b"", b"junk", unsuccessful(), tampered(revoked)):
        (issue,) = stapled(proves_nothing, chain, POLICY, "api.test", now)
        assert issue.kind in ("staple_missing", "staple_invalid") and issue.effect is Effect.ENFORCED
    assert stapled(revoked, chain, POLICY, "off.test", now) == []


def test_an_expired_staple_is_judged_by_the_clock_given(chain: Chain) -> None:
    now = utcnow()
    data = ocsp_response(chain.leaf, chain.intermediate, this_update=now - dt.timedelta(hours=1))
    assert judge_revocation(data, chain.certs, REQUIRE, now) == []
    (issue,) = judge_revocation(data, chain.certs, REQUIRE, now + dt.timedelta(days=3))
    assert issue.kind == "staple_invalid" and issue.evidence["staple"] == "expired"


def test_no_staple_asked_for_quic_or_a_resumed_session_is_not_passed_silently(chain: Chain) -> None:
    (issue,) = stapled(None, chain, POLICY, "api.test", utcnow())
    assert issue.kind == "staple_not_requested" and issue.effect is Effect.ENFORCED and "quic: refuse" in issue.remedy
    (recorded,) = stapled(None, chain, POLICY, "legacy.test", utcnow())
    assert recorded.effect is Effect.RECORD


def test_a_must_staple_leaf_from_the_chain(chain: Chain) -> None:
    leaf = make_leaf(chain.intermediate, ("api.test",), must_staple=True)
    (issue,) = judge_revocation(b"", [leaf.cert, chain.intermediate.cert], REPORT, utcnow())
    assert issue.evidence["must_staple"] is True and issue.severity is Severity.HIGH


def test_a_judge_that_raises_refuses_the_server(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry turns an exception into a blocking check_failed named after this check."""
    import tlsgate.checks.revocation as module

    def broken(*args: object) -> list:
        raise RuntimeError("a bug")

    (judge,) = [j for j in registry.judges(Phase.STAPLED) if j.name == "revocation"]
    assert (judge.check, judge.section) == (Check.REVOCATION, REVOCATION)
    monkeypatch.setattr(module, "read_staple", broken)  # read_staple itself never raises: break it from outside
    (issue,) = stapled(b"x", chain, POLICY, "legacy.test", utcnow())
    assert (issue.check, issue.kind, issue.effect) == (Check.REVOCATION, "check_failed", Effect.ALWAYS)
    assert "stapled OCSP response" in issue.detail


def test_the_readme_example_means_what_the_readme_says() -> None:
    from tests.unit.test_readme_policies import BLOCKS

    (text,) = [text for _, text, _ in BLOCKS if "revocation:" in text and "stapling: require" in text]
    strict = set_rules(text, "api.example.com")
    assert (strict.stapling, strict.revoked) == (Stapling.REQUIRE, Revoked.BLOCK)
    legacy = set_rules(text, "legacy.example.com")
    assert (legacy.stapling, legacy.revoked) == (Stapling.REPORT, Revoked.BLOCK)
