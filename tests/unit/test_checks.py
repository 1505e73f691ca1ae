"""Every verdict in `tlsgate.checks`, from plain facts: no proxy, no sockets.

The checks only return issues; whether an issue blocks is `decide`'s alone, so the truth table is
tested once here and every other test asserts the effect an issue carries.
"""

from __future__ import annotations

import datetime as dt

import pytest

from tests.certgen import make_chain, make_intermediate, make_leaf, make_root, utcnow
from tests.unit.test_clienthello import extension, hello_body, sni_ext, u16_list, vec8
from tlsgate.checks.certificates import check_chain
from tlsgate.checks.cleartext import CleartextRequest, judge_cleartext
from tlsgate.checks.client_hello import client_floor, judge_client_hello, judge_client_sni, judge_client_version
from tlsgate.checks.model import Action, Check, Effect, Issue, Severity, blocks, decide, remedy_for
from tlsgate.checks.probes import (
    CLOSED_AFTER_HANDSHAKE,
    CLOSED_SILENTLY,
    PROBE_REMEDIES,
    TRUST_REMEDY,
    ProbeRun,
    ProbeSchedule,
    client_rejection,
    trust_refused,
)
from tlsgate.checks.upstream import (
    HandshakeFacts,
    evidence_for,
    judge_certificates,
    judge_cipher,
    judge_failure,
    judge_handshake,
    judge_pins,
    judge_protocol,
)
from tlsgate.policy import Location, Mode, load_texts
from tlsgate.policy.sections.certificates import CertRules
from tlsgate.policy.sections.client import ClientRules
from tlsgate.policy.sections.pins import Pinning
from tlsgate.policy.sections.tls import TlsRules
from tlsgate.sinks.findings import SEVERITIES
from tlsgate.tls.clienthello import parse_client_hello
from tlsgate.tls.pins import PinSet, spki_pin

POLICY = """\
version: 1
defaults:
  mode: enforce
  cleartext: block
rules:
  - hosts: [open.test]
    cleartext: allow
  - hosts: [api.test, '*.api.test']
    mode: report
"""
policy = load_texts([("p.yaml", POLICY)])

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def chain():
    return make_chain(dns=("api.test",))


def issue(effect: Effect, severity: Severity = Severity.HIGH) -> Issue:
    return Issue(Check.TLS, "kind", effect, severity, "detail")


# -- model ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effect", "mode", "action"),
    [
        (Effect.ENFORCED, Mode.ENFORCE, Action.BLOCKED),
        (Effect.ENFORCED, Mode.REPORT, Action.REPORTED),
        (Effect.ALWAYS, Mode.ENFORCE, Action.BLOCKED),
        (Effect.ALWAYS, Mode.REPORT, Action.BLOCKED),
        (Effect.RECORD, Mode.ENFORCE, Action.REPORTED),
        (Effect.RECORD, Mode.REPORT, Action.REPORTED),
        (Effect.PASSED, Mode.ENFORCE, Action.PASSED),
        (Effect.PASSED, Mode.REPORT, Action.PASSED),
        (Effect.FAULT, Mode.ENFORCE, Action.FAILED),
        (Effect.FAULT, Mode.REPORT, Action.FAILED),
    ],
)
def test_decide_truth_table(effect: Effect, mode: Mode, action: Action) -> None:
    assert decide(issue(effect), mode) is action
    assert blocks([issue(Effect.RECORD), issue(effect)], mode) is (action in (Action.BLOCKED, Action.FAILED))


def test_the_truth_table_covers_every_effect_and_mode() -> None:
    # If an Effect or Mode is added, the table above must grow with it.
    assert {e.name for e in Effect} == {"ENFORCED", "ALWAYS", "RECORD", "PASSED", "FAULT"}
    assert {m.value for m in Mode} == {"enforce", "report"}


def test_blocking_is_what_a_refusal_in_the_handshake_acts_on() -> None:
    assert [issue(e).blocking for e in Effect] == [True, True, False, False, True]
    assert blocks([], Mode.ENFORCE) is False


def test_severity_vocabulary_is_the_findings_vocabulary() -> None:
    assert tuple(Severity) == SEVERITIES
    assert tuple(s.value for s in Severity) == SEVERITIES  # and in the same (ascending) order


def test_remedy_for_names_the_rule_that_matched() -> None:
    assert remedy_for(policy.match("open.test"), "cleartext: allow") == "set 'cleartext: allow' in the rule at p.yaml:6"


def test_remedy_for_a_host_without_a_rule_suggests_a_new_one() -> None:
    assert remedy_for(policy.match("Other.Test:8080"), "mode: report") == (
        "add a rule with hosts: [other.test] and 'mode: report' (the defaults at p.yaml:2 apply now)"
    )


# -- cleartext -----------------------------------------------------------------------------------------


def test_cleartext_allowed_by_the_rule_is_no_issue() -> None:
    assert judge_cleartext(CleartextRequest("GET", False, "http://open.test/"), policy.match("open.test")) is None


def test_cleartext_without_credentials_is_medium_and_enforced() -> None:
    found = judge_cleartext(
        CleartextRequest("GET", False, "http://other.test/x", user_agent="a" * 300), policy.match("other.test")
    )
    assert found is not None
    assert (found.check, found.kind, found.effect, found.severity) == (
        Check.CLEARTEXT,
        "plain_http",
        Effect.ENFORCED,
        Severity.MEDIUM,
    )
    assert found.detail == "plain http:// request to other.test (GET)"
    assert found.evidence == {
        "method": "GET",
        "url": "http://other.test/x",
        "protocol": "http",
        "credentials": [],
        "user_agent": "a" * 200,
    }
    assert found.remedy == (
        "use https:// in the app; or, to let this host through, add a rule with hosts: [other.test] and "
        "'cleartext: allow' (the defaults at p.yaml:2 apply now)"
    )


def test_cleartext_with_credentials_is_high_and_names_the_kinds_once() -> None:
    creds = [{"kind": "query", "name": "token"}, {"kind": "authorization", "name": "authorization: Bearer"}]
    creds.append({"kind": "query", "name": "api_key"})
    found = judge_cleartext(CleartextRequest("POST", False, "http://api.test/", creds), policy.match("api.test"))
    assert found is not None and found.severity is Severity.HIGH
    assert found.detail.endswith("carrying credentials in cleartext: authorization, query")
    assert found.evidence["credentials"] == creds
    assert decide(found, policy.match("api.test").settings.mode) is Action.REPORTED  # api.test is a report rule
    assert "set 'cleartext: allow' in the rule at p.yaml:8" in found.remedy


def test_cleartext_websocket_is_plain_ws() -> None:
    found = judge_cleartext(CleartextRequest("GET", True, "http://other.test/socket"), policy.match("other.test"))
    assert found is not None
    assert (found.kind, found.evidence["protocol"]) == ("plain_ws", "ws")
    assert found.detail.startswith("plain ws:// request") and found.remedy.startswith("use wss:// in the app")


# -- probes --------------------------------------------------------------------------------------------


def probe_run(kind: str = "self_signed") -> ProbeRun:
    return ProbeRun(kind, "api.test", {"kind": kind, "subject": "CN=api.test"})


def test_probe_refused_with_a_certificate_alert_passes() -> None:
    run = probe_run()
    passed = run.handshake_failed("OpenSSL Error([('SSL routines', '', 'tlsv1 alert unknown ca')])")
    assert passed is not None and run.passed is passed
    assert (passed.check, passed.kind, passed.effect, passed.severity) == (
        Check.CLIENT_PROBE,
        "self_signed",
        Effect.PASSED,
        Severity.INFO,
    )
    assert passed.evidence == {"kind": "self_signed", "rejection": "unknown ca", "certificate": run.certificate}
    assert "refused a self-signed certificate for api.test (unknown ca)" in passed.detail
    assert decide(passed, Mode.ENFORCE) is Action.PASSED


@pytest.mark.parametrize("error", ["no shared cipher", "unsupported protocol", None, ""])
def test_probe_failing_for_another_reason_proves_nothing(error: str | None) -> None:
    run = probe_run()
    assert run.handshake_failed(error) is None
    assert run.passed is None


def test_probe_closed_silently_mid_handshake_passes_as_a_silent_close() -> None:
    passed = probe_run("wrong_host").handshake_failed("Client disconnected during the handshake")
    assert passed is not None and passed.evidence["rejection"] == CLOSED_SILENTLY


def test_probe_accepted_is_one_critical_issue_however_often_the_client_sends() -> None:
    run = probe_run("expired")
    run.handshake_done = True
    first = run.sent({"protocol": "http", "method": "POST", "url": "https://api.test/login"})
    second = run.sent({"protocol": "tcp", "bytes": 3})
    assert second is first and run.accepted is first
    assert (first.check, first.kind, first.effect, first.severity) == (
        Check.CLIENT_PROBE,
        "expired",
        Effect.ALWAYS,
        Severity.CRITICAL,
    )
    assert "accepted an expired certificate for api.test and sent POST https://api.test/login over it" in first.detail
    assert first.evidence["sent"] == {"protocol": "http", "method": "POST", "url": "https://api.test/login"}
    assert first.remedy == PROBE_REMEDIES["expired"]
    assert decide(first, Mode.REPORT) is Action.BLOCKED  # never forwarded, whatever the mode
    assert run.closed() is None  # an accepted probe never passes afterwards


def test_probe_sent_raw_tcp_is_named_as_such() -> None:
    assert "sent raw TCP data over it" in probe_run().sent({"protocol": "tcp", "bytes": 10}).detail


def test_probe_closed_after_handshake_without_data_passes() -> None:
    run = probe_run("untrusted_ca")
    run.handshake_done = True
    passed = run.closed()
    assert passed is not None and passed.effect is Effect.PASSED
    assert passed.evidence["rejection"] == CLOSED_AFTER_HANDSHAKE
    assert run.closed() is None  # said once


def test_every_probe_kind_is_worded_and_accepting_a_chain_probe_says_its_own_risk() -> None:
    from tlsgate.checks.probes import PROBE_RISKS, PROBE_SEVERITY, PROBE_WORDS
    from tlsgate.tls.probes import CHAIN_PROBE_KINDS, PROBE_KINDS

    assert set(PROBE_WORDS) == set(PROBE_REMEDIES) == set(PROBE_KINDS)
    assert set(PROBE_RISKS) == set(CHAIN_PROBE_KINDS) and set(PROBE_SEVERITY) < set(CHAIN_PROBE_KINDS)
    sent = {"protocol": "http", "method": "GET", "url": "https://api.test/"}
    cn_only = probe_run("cn_only")
    issue = cn_only.sent(sent)
    assert issue.severity is Severity.MEDIUM and issue.kind == "cn_only"
    assert "accepted a certificate with the host name in the subject CN only, no subjectAltName for api.test" in issue.detail
    assert "any impostor" not in issue.detail and "subject CN, which CAs no longer vet" in issue.detail
    assert "X509_CHECK_FLAG_NEVER_CHECK_SUBJECT" in issue.remedy
    non_ca = probe_run("non_ca_issuer").sent(sent)
    assert non_ca.severity is Severity.CRITICAL and "anyone holding any certificate from a trusted CA" in non_ca.detail
    assert "hand-written verifier that checks signatures only" in non_ca.remedy
    assert "any impostor" in probe_run("self_signed").sent(sent).detail  # the original four keep their words
    refused = probe_run("sha1_signature").handshake_failed("tlsv1 alert unknown ca")
    assert refused is not None and refused.severity is Severity.INFO and "signed with SHA-1" in refused.detail


def test_probe_closed_before_the_handshake_completed_says_nothing() -> None:
    assert probe_run().closed() is None


def test_probe_refused_in_the_handshake_does_not_pass_twice_on_close() -> None:
    run = probe_run()
    assert run.handshake_failed("sslv3 alert bad certificate") is not None
    run.handshake_done = True  # cannot really happen, but closed() must still not say it again
    assert run.closed() is None


def test_trust_refused_explains_a_refusal_of_tlsgates_certificate() -> None:
    found = trust_refused("api.test", "tlsv1 alert unknown ca " + "x" * 400)
    assert found is not None
    assert (found.check, found.kind, found.effect, found.severity) == (
        Check.CLIENT_TRUST,
        "certificate_refused",
        Effect.RECORD,
        Severity.INFO,
    )
    assert found.evidence["rejection"] == "unknown ca" and len(found.evidence["error"]) == 300
    assert "tlsgate's CA is not installed" in found.detail and found.remedy == TRUST_REMEDY
    assert decide(found, Mode.ENFORCE) is Action.REPORTED


def test_trust_refused_ignores_failures_that_are_not_about_trust() -> None:
    assert trust_refused("api.test", "no shared cipher") is None
    assert trust_refused("api.test", None) is None
    silent = trust_refused("api.test", "connection closed")
    assert silent is not None and silent.evidence["rejection"] == CLOSED_SILENTLY


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca", "unknown ca"),
        ("sslv3 alert certificate expired", "certificate expired"),
        ("SSLV3_ALERT_BAD_CERTIFICATE: sslv3 alert bad certificate", "bad certificate"),
        ("Connection closed", CLOSED_SILENTLY),
        ("Client disconnected during the handshake", CLOSED_SILENTLY),
        ("connection closed by peer after 3 bytes", None),
        ("wrong version number", None),
        (None, None),
    ],
)
def test_client_rejection(error: str | None, expected: str | None) -> None:
    assert client_rejection(error) == expected


def test_probe_schedule_gives_each_kind_once_and_takes_back_a_retry() -> None:
    schedule = ProbeSchedule(capacity=2)
    kinds = ("self_signed", "expired")
    assert schedule.next_kind("10.0.0.1", "api.test", kinds) == "self_signed"
    assert schedule.next_kind("10.0.0.1", "api.test", kinds) == "expired"
    assert schedule.next_kind("10.0.0.1", "api.test", kinds) is None
    schedule.retry("10.0.0.1", "api.test", "self_signed")
    assert schedule.tried("10.0.0.1", "api.test") == ("expired",)
    assert schedule.next_kind("10.0.0.1", "api.test", kinds) == "self_signed"
    assert schedule.next_kind("10.0.0.2", "api.test", kinds) == "self_signed"  # per client address
    schedule.next_kind("10.0.0.3", "api.test", kinds)
    assert len(schedule) == 2 and schedule.tried("10.0.0.1", "api.test") == ()  # least recent pair forgotten


# -- client hello --------------------------------------------------------------------------------------


def hello(version: int = 0x0303, sni: str | None = "api.test", supported: tuple[int, ...] = ()):
    extensions = [sni_ext(sni)] if sni else []
    if supported:
        extensions.append(extension(43, vec8(u16_list(list(supported)))))
    return parse_client_hello(hello_body(version, [0xC02F, 0x1301], extensions))


def test_client_version_below_the_minimum_is_enforced_and_says_what_tlsgate_did() -> None:
    (low,) = judge_client_version(hello(0x0302), ClientRules(), enforce=True)
    assert (low.check, low.kind, low.effect, low.severity) == (
        Check.CLIENT_PROTOCOL,
        "version_too_low",
        Effect.ENFORCED,
        Severity.HIGH,
    )
    assert low.evidence == {"best_offered_version": "1.1", "min_version": "1.2"}
    assert "at best TLS 1.1" in low.detail and low.detail.endswith("tlsgate refused the handshake")
    (reported,) = judge_client_version(hello(0x0302), ClientRules(), enforce=False)
    assert reported.detail.endswith("recorded it (report mode)")
    assert judge_client_version(hello(0x0303, supported=(0x0304,)), ClientRules(min_version="1.3"), enforce=True) == []
    assert (
        judge_client_version(hello(0x0303), ClientRules(min_version="1.3"), enforce=True)[0].evidence["best_offered_version"]
        == "1.2"
    )


def test_client_sni_missing_for_a_name_but_not_for_an_address_or_when_not_required() -> None:
    (no_sni,) = judge_client_sni(hello(sni=None), ClientRules(), "api.test")
    assert (no_sni.check, no_sni.kind, no_sni.effect) == (Check.CLIENT_SNI, "no_sni", Effect.RECORD)
    assert judge_client_sni(hello(sni=None), ClientRules(), "[2001:db8::1]") == []
    assert judge_client_sni(hello(sni=None), ClientRules(), "192.0.2.7") == []
    assert judge_client_sni(hello(sni=None), ClientRules(require_sni=False), "api.test") == []
    assert judge_client_sni(hello(), ClientRules(), "api.test") == []


def test_judge_client_hello_collects_version_suites_and_sni() -> None:
    old = parse_client_hello(hello_body(0x0301, [0x0005], []))  # TLS 1.0, RC4 only, no SNI
    kinds = [i.kind for i in judge_client_hello(old, ClientRules(), True, "api.test")]
    assert kinds == ["version_too_low", "broken_suites_offered", "no_sni"]
    assert judge_client_hello(hello(supported=(0x0304, 0x0303)), ClientRules(), True, "api.test") == []


@pytest.mark.parametrize(
    ("best", "rules", "enforce", "current", "floor"),
    [
        (None, ClientRules(), True, "1.2", None),  # nothing known: leave mitmproxy's floor alone
        ("1.3", ClientRules(), True, "1.2", None),
        ("1.2", ClientRules(min_version="1.3"), True, "1.2", "1.3"),  # raise the floor to refuse the client
        ("1.0", ClientRules(), True, "1.2", None),  # mitmproxy's own floor already refuses it
        ("1.1", ClientRules(min_version="1.0"), True, "1.2", "1.0"),  # an explicitly allowed old client
        ("1.0", ClientRules(), False, "1.2", "1.0"),  # report mode lets it in to watch it
        ("0.3", ClientRules(), False, "1.2", "1.0"),  # nothing below TLS 1.0 can be negotiated
        ("1.1", ClientRules(), True, "0.3", "1.2"),  # an unbounded mitmproxy floor is raised to refuse the client
        ("1.2", ClientRules(), True, "0.3", None),  # ...but left alone for a client that meets the minimum
    ],
)
def test_client_floor(best: str | None, rules: ClientRules, enforce: bool, current: str, floor: str | None) -> None:
    assert client_floor(best, rules, enforce, current) == floor


# -- upstream: protocol, cipher, certificates, pins --------------------------------------------------


def test_judge_protocol() -> None:
    assert judge_protocol("TLSv1.2", TlsRules()) == []
    assert judge_protocol("TLSv1.3", TlsRules("1.3")) == []
    assert judge_protocol(None, TlsRules()) == []  # unknown is never judged below
    (low,) = judge_protocol("TLSv1.2", TlsRules("1.3"))
    assert (low.check, low.kind, low.effect) == (Check.PROTOCOL, "version_too_low", Effect.ENFORCED)
    assert low.evidence == {"negotiated_version": "TLSv1.2", "min_version": "1.3"}
    assert low.detail == "the server negotiated TLS 1.2, below the policy minimum TLS 1.3"


@pytest.mark.parametrize(
    ("cipher", "kind", "effect"),
    [
        ("TLS_AES_128_GCM_SHA256", None, None),
        ("ECDHE-RSA-AES128-GCM-SHA256", None, None),
        (None, None, None),
        ("ECDHE-RSA-AES128-SHA", "weak_suite_allowed", Effect.RECORD),
        ("DES-CBC3-SHA", "weak_suite", Effect.ENFORCED),
        ("RC4-SHA", "weak_suite", Effect.ENFORCED),
        ("NOT-A-REAL-SUITE", "unknown_suite", Effect.RECORD),
    ],
)
def test_judge_cipher_under_the_default_policy(cipher: str | None, kind: str | None, effect: Effect | None) -> None:
    issues = judge_cipher(cipher, TlsRules())
    assert [(i.kind, i.effect) for i in issues] == ([] if kind is None else [(kind, effect)])


def test_judge_cipher_refusal_names_the_policy_reason_and_the_weakness() -> None:
    (refused,) = judge_cipher("DES-CBC3-SHA", TlsRules())
    assert refused.check is Check.CIPHER and refused.severity is Severity.HIGH
    assert refused.evidence["openssl_name"] == "DES-CBC3-SHA" and "des" in refused.evidence["weaknesses"]
    assert "refused by the policy (refused by default: broken suite (des))" in refused.detail


def test_check_chain_flags_weak_keys_as_blocking_and_dates_as_not() -> None:
    root = make_root()
    weak = make_leaf(root, ("api.test",), key="rsa:1024")
    issues = check_chain([weak.cert, root.cert], CertRules(), NOW)
    assert [(i.kind, i.cert_index, i.blocking) for i in issues] == [("weak_rsa_key", 0, True)]
    assert "1024-bit RSA key; at least 2048 bits" in issues[0].detail
    assert check_chain([weak.cert], CertRules(min_rsa_bits=1024), NOW) == []

    expired = make_leaf(
        root, ("api.test",), not_before=utcnow() - dt.timedelta(days=30), not_after=utcnow() - dt.timedelta(days=2)
    )
    soon = make_leaf(root, ("api.test",), not_after=utcnow() + dt.timedelta(days=3))
    early = make_leaf(root, ("api.test",), not_before=utcnow() + dt.timedelta(days=2))
    assert [(i.kind, i.blocking) for i in check_chain([expired.cert], CertRules(), NOW)] == [("expired", False)]
    assert [(i.kind, i.blocking) for i in check_chain([soon.cert], CertRules(), NOW)] == [("expiring_soon", False)]
    assert check_chain([soon.cert], CertRules(expiry_warning_days=1), NOW) == []
    assert [(i.kind, i.blocking) for i in check_chain([early.cert], CertRules(), NOW)] == [("not_yet_valid", False)]


def test_check_chain_sha1_blocks_unless_allowed() -> None:
    root = make_root()
    sha1 = make_intermediate(root, digest="sha1")
    leaf = make_leaf(sha1, ("api.test",))
    chain = [leaf.cert, sha1.cert, root.cert]
    (found,) = check_chain(chain, CertRules(), NOW)
    assert (found.kind, found.cert_index, found.blocking) == ("sha1_signature", 1, True)
    (allowed,) = check_chain(chain, CertRules(allow_sha1=True), NOW)
    assert allowed.blocking is False


def test_judge_certificates_maps_blocking_to_enforced_high() -> None:
    root = make_root()
    weak = make_leaf(root, ("api.test",), key="ec:P-192", not_after=utcnow() + dt.timedelta(days=3))
    issues = judge_certificates([weak.cert], CertRules(), NOW)
    assert [(i.check, i.kind, i.effect, i.severity) for i in issues] == [
        (Check.CERTIFICATE, "weak_ec_key", Effect.ENFORCED, Severity.HIGH),
        (Check.CERTIFICATE, "expiring_soon", Effect.RECORD, Severity.MEDIUM),
    ]
    assert issues[0].evidence == {"certificate": "CN=api.test,O=tlsgate tests", "chain_index": 0}
    assert issues[0].remedy == "replace the certificate" and issues[1].remedy == ""


def pinning(*pins: str, expires: dt.date | None = None) -> Pinning:
    return Pinning(PinSet.from_strings("backend", list(pins), expires), Location("pins.yaml", 7, 3))


OTHER_PIN = "sha256/" + "A" * 43 + "="


def test_judge_pins_match_mismatch_and_expired(chain) -> None:
    today = NOW.date()
    assert judge_pins(chain.certs, None, today) == []
    assert judge_pins(chain.certs, pinning(OTHER_PIN, spki_pin(chain.intermediate.cert)), today) == []

    (mismatch,) = judge_pins(chain.certs, pinning(OTHER_PIN), today)
    assert (mismatch.check, mismatch.kind, mismatch.effect, mismatch.severity) == (
        Check.PIN,
        "pin_mismatch",
        Effect.ENFORCED,
        Severity.CRITICAL,
    )
    assert mismatch.evidence["expected"] == [OTHER_PIN] and mismatch.evidence["pin_set_at"] == "pins.yaml:7"
    assert [c["pin"] for c in mismatch.evidence["chain"]] == [spki_pin(c) for c in chain.certs]
    assert "pin set 'backend' at pins.yaml:7" in mismatch.remedy

    (expired,) = judge_pins(chain.certs, pinning(OTHER_PIN, expires=today), today)  # expiry day counts, as on Android
    assert (expired.kind, expired.effect) == ("pin_set_expired", Effect.RECORD)
    assert expired.evidence == {"pin_set": "backend", "expires": str(today), "pin_set_at": "pins.yaml:7"}
    assert judge_pins(chain.certs, pinning(OTHER_PIN, expires=today + dt.timedelta(days=1)), today)[0].kind == "pin_mismatch"


def test_judge_handshake_reads_the_rules_of_the_match(chain) -> None:
    text = f"""\
version: 1
rules:
  - hosts: [api.test]
    tls: {{min_version: '1.3'}}
    pins: ['{OTHER_PIN}', '{spki_pin(chain.root.cert)}']
  - hosts: [pinned.test]
    pins: ['{OTHER_PIN}', 'sha256/{"B" * 43}=']
"""
    pinned = load_texts([("p.yaml", text)])
    facts = HandshakeFacts("TLSv1.2", "ECDHE-RSA-AES128-SHA", chain.certs)
    assert [i.kind for i in judge_handshake(facts, pinned.match("api.test"), NOW)] == ["version_too_low", "weak_suite_allowed"]
    assert [i.kind for i in judge_handshake(facts, pinned.match("pinned.test"), NOW)] == ["weak_suite_allowed", "pin_mismatch"]
    assert (
        judge_handshake(HandshakeFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", chain.certs), pinned.match("other.test"), NOW) == []
    )


def test_evidence_for_summarises_the_chain(chain) -> None:
    evidence = evidence_for("TLSv1.3", "TLS_AES_128_GCM_SHA256", chain.served)
    assert evidence["negotiated_version"] == "TLSv1.3" and evidence["negotiated_suite"] == "TLS_AES_128_GCM_SHA256"
    assert [c["role"] for c in evidence["chain"]] == ["leaf", "intermediate"]
    assert evidence["chain"][0]["pin"] == spki_pin(chain.leaf.cert)


# -- upstream: failed handshakes ---------------------------------------------------------------------


def test_judge_failure_weak_leaf_key_is_named_like_the_certificate_rules() -> None:
    rsa = make_leaf(None, ("api.test",), key="rsa:1024")
    found = judge_failure("certificate verify failed: EE certificate key too weak", 66, [rsa.cert], TlsRules())
    assert (found.check, found.kind, found.effect, found.severity) == (
        Check.CERTIFICATE,
        "weak_rsa_key",
        Effect.ALWAYS,
        Severity.HIGH,
    )
    assert found.evidence["verify_code"] == 66 and found.evidence["chain"][0]["pin"] == spki_pin(rsa.cert)
    assert decide(found, Mode.REPORT) is Action.BLOCKED  # report mode never loosens mitmproxy's validation

    ec = make_leaf(None, ("api.test",), key="ec:P-192")
    assert judge_failure("EE certificate key too weak", 66, [ec.cert], TlsRules()).kind == "weak_ec_key"
    assert judge_failure("EE certificate key too weak", 66, [], TlsRules()).kind == "weak_key"


def test_judge_failure_weak_ca_key_looks_at_the_issuer(chain) -> None:
    weak_ca = make_root(key="rsa:1024")
    leaf = make_leaf(weak_ca, ("api.test",))
    assert judge_failure("CA certificate key too weak", 67, [leaf.cert, weak_ca.cert], TlsRules()).kind == "weak_rsa_key"
    assert judge_failure("CA md too weak", 68, chain.served, TlsRules()).kind == "sha1_signature"


@pytest.mark.parametrize(
    ("error", "code", "kind", "check"),
    [
        ("Certificate verify failed: certificate has expired", 10, "expired", Check.CERTIFICATE),
        ("certificate verify failed: hostname mismatch", None, "hostname_mismatch", Check.CERTIFICATE),
        ("OpenSSL Error([('SSL routines', '', 'unsupported protocol')])", 0, "no_common_protocol", Check.PROTOCOL),
        ("OpenSSL Error([('SSL routines', '', 'sslv3 alert handshake failure')])", 0, "no_common_suite", Check.CIPHER),
        ("OpenSSL Error([('SSL routines', '', 'tlsv1 alert internal error')])", 0, "handshake_failed", Check.TLS),
    ],
)
def test_judge_failure_in_words(error: str, code: int | None, kind: str, check: Check) -> None:
    found = judge_failure(error, code, [], TlsRules())
    assert (found.kind, found.check, found.effect) == (kind, check, Effect.ALWAYS)
    assert found.evidence["tls_error"] == error and found.remedy


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("The remote server does not speak TLS.", "not_tls"),
        ("connection reset by peer", "reset"),
        ("[Errno 104] Connection reset by peer", "reset"),
        ("OpenSSL Error([('SSL routines', '', 'unexpected eof while reading')])", "closed"),
        ("Connection timed out", "timeout"),
        ("[Errno 111] Connect call failed ('127.0.0.1', 9): Connection refused", "refused"),
    ],
)
def test_network_faults_are_faults_not_verdicts(error: str, kind: str) -> None:
    found = judge_failure(error, None, [], TlsRules())
    assert (found.kind, found.check, found.effect, found.severity) == (kind, Check.FAULT, Effect.FAULT, Severity.LOW)
    assert decide(found, Mode.ENFORCE) is Action.FAILED and "not a policy verdict" in found.remedy or kind == "not_tls"
    assert found.evidence["tls_error"] == error and found.remedy


def test_judge_failure_certificate_evidence_keeps_openssls_words() -> None:
    found = judge_failure("Certificate verify failed: certificate has expired", 10, [], TlsRules())
    assert found.evidence["failure"] == "expired" and found.evidence["openssl"] == "X509_V_ERR_CERT_HAS_EXPIRED"
    assert found.remedy == "renew the server's certificate"


def test_ambiguous_header_fields_are_named_never_valued() -> None:
    from tlsgate.checks.request import judge_header_fields

    match = load_texts([("p.yaml", "version: 1\ndefaults:\n  mode: report\n")]).match("api.test")
    issue = judge_header_fields([(b"host", b"api.test"), (b"x-token", b"SECRET\rX-Injected: 1")], match)
    assert issue is not None and issue.check is Check.REQUEST and decide(issue, Mode.REPORT) is Action.BLOCKED
    assert "bare CR" in issue.detail and "'x-token'" in issue.detail and "SECRET" not in str(issue)
    assert issue.evidence == {"header": "x-token", "value_length": 20}
    assert "NUL" in judge_header_fields([(b"a", b"\x00")], match).detail
    assert "not an HTTP token" in judge_header_fields([(b"bad name", b"x")], match).detail
    assert judge_header_fields([(b"x-ok", b'a\tb "c" \xff')], match) is None
