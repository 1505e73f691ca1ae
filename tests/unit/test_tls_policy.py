"""Policy sections for upstream TLS and the pure verdicts on them (no proxy)."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.certgen import make_chain
from tlsgate.checks.upstream import HandshakeFacts, handshake_floor, judge_cipher, judge_failure, judge_handshake, judge_protocol
from tlsgate.policy import Match, PolicyError, Settings, load_texts
from tlsgate.policy.sections.certificates import CertRules
from tlsgate.policy.sections.pins import Pinning
from tlsgate.policy.sections.tls import TlsRules
from tlsgate.tls.pins import PinSet, spki_pin
from tlsgate.tls.presets import CipherPolicy

PIN_A = "sha256/" + "A" * 43 + "="
PIN_B = "sha256/" + "B" * 43 + "="


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_texts([("p.yaml", text)])
    return [str(m) for m in caught.value.messages]


def test_sections_parse_into_typed_settings() -> None:
    policy = load_texts(
        [
            (
                "p.yaml",
                f"pin_sets:\n  api:\n    pins: [{PIN_A}, {PIN_B}]\n    expires: 2030-01-31\n"
                "defaults:\n  tls:\n    min_version: 1.2\n    ciphers: intermediate\n"
                "rules:\n  - hosts: api.test\n    pins: api\n    certificates:\n      min_rsa_bits: 3072\n      expiry_warning_days: 30\n"
                "  - hosts: legacy.test\n    mode: report\n    tls:\n      min_version: '1.0'\n      ciphers:\n        preset: old\n"
                "        deny: [DES-CBC3-SHA]\n    pins: off\n",
            )
        ]
    )
    api = policy.match("api.test").settings
    assert api.get("tls") == TlsRules("1.2", CipherPolicy(preset="intermediate"))
    assert api.get("certificates") == CertRules(min_rsa_bits=3072, expiry_warning_days=30)
    pinning = api.get("pins")
    assert isinstance(pinning, Pinning) and pinning.pin_set.expires == dt.date(2030, 1, 31)
    assert str(pinning.location) == "p.yaml:2:3"
    legacy = policy.match("legacy.test").settings
    assert legacy.get("tls").min_version == "1.0" and legacy.get("tls").ciphers.deny == {0x000A}
    assert legacy.get("pins") is None
    other = policy.match("other.test").settings
    assert other.get("certificates") == CertRules() and other.get("pins") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("defaults:\n  tls:\n    min_version: 1.4\n", "p.yaml:3:18: tls.min_version must be one of 1.0, 1.1, 1.2, 1.3"),
        ("defaults:\n  tls:\n    ciphers: strong\n", "p.yaml:3:14: cipher preset must be one of modern, intermediate, old, ats"),
        (
            "defaults:\n  tls:\n    ciphers:\n      allow: [TLS_FAKE_SUITE]\n",
            "p.yaml:4:15: unknown cipher suite 'TLS_FAKE_SUITE'",
        ),
        ("defaults:\n  tls:\n    minversion: 1.2\n", "p.yaml:3:5: unknown key 'minversion' in tls; did you mean 'min_version'?"),
        (
            "defaults:\n  certificates:\n    min_rsa_bits: 512\n",
            "p.yaml:3:19: certificates.min_rsa_bits must be a whole number from 1024",
        ),
        ("defaults:\n  certificates:\n    allow_sha1: maybe\n", "p.yaml:3:17: certificates.allow_sha1 must be true or false"),
        ("pin_sets:\n  a:\n    pins: [sha1/AAAA]\n", "p.yaml:3:12: "),
        ("pin_sets:\n  a:\n    pins: ['sha256/not base64!']\n", "p.yaml:3:12: "),
        ("pin_sets:\n  a:\n    pins: [sha256/AAAA]\n", "p.yaml:3:12: "),
        ("pin_sets:\n  a:\n    pins: [" + PIN_A + "]\n    expires: soon\n", "p.yaml:4:14: pin set 'a': expires must be a date"),
        ("pin_sets:\n  a: {expires: 2030-01-01}\n", "p.yaml:2:6: pin set 'a' needs 'pins'"),
        ("rules:\n  - hosts: a.test\n    pins: missing\n", "p.yaml:3:11: unknown pin set 'missing'"),
    ],
)
def test_tls_section_errors_are_located(text: str, expected: str) -> None:
    found = errors(text)
    assert any(m.startswith(expected) for m in found), found


def test_malformed_pins_say_what_is_wrong() -> None:
    (sha1,) = errors("pin_sets:\n  a:\n    pins: [sha1/AAAA]\n")
    assert "sha1" in sha1
    (short,) = errors("pin_sets:\n  a:\n    pins: [sha256/AAAA]\n")
    assert "32 bytes" in short


def test_single_pin_warns_about_backup() -> None:
    policy = load_texts([("p.yaml", f"pin_sets:\n  a:\n    pins: [{PIN_A}]\nrules:\n  - hosts: a.test\n    pins: a\n")])
    assert any("backup" in str(w) for w in policy.warnings)


def test_pin_sets_may_live_in_another_file() -> None:
    policy = load_texts(
        [
            ("rules.yaml", "rules:\n  - hosts: a.test\n    pins: shared\n"),
            ("pins.yaml", f"pin_sets:\n  shared:\n    pins: [{PIN_A}, {PIN_B}]\n"),
        ]
    )
    assert policy.match("a.test").settings.get("pins").pin_set.name == "shared"


def test_protocol_and_cipher_verdicts() -> None:
    rules = TlsRules("1.2", CipherPolicy(preset="intermediate"))
    assert judge_protocol("TLSv1.2", rules) == []
    (low,) = judge_protocol("TLSv1", rules)
    assert low.blocking and "TLS 1.0" in low.detail
    assert judge_cipher("ECDHE-RSA-AES128-GCM-SHA256", rules) == []
    (cbc,) = judge_cipher("ECDHE-RSA-AES128-SHA", rules)
    assert cbc.blocking and "CBC mode" in cbc.detail and "SHA-1 MAC" in cbc.detail
    (allowed,) = judge_cipher("ECDHE-RSA-AES128-SHA", TlsRules())
    assert not allowed.blocking and allowed.kind == "weak_suite_allowed"
    (rsa,) = judge_cipher("AES256-GCM-SHA384", TlsRules("1.2", CipherPolicy(preset="ats")))
    assert "no forward secrecy" in rsa.detail


def test_handshake_verdict_collects_everything() -> None:
    chain = make_chain(dns=("a.test",))
    now = dt.datetime.now(dt.UTC)
    pinning = Pinning(PinSet.from_strings("p", [PIN_A, PIN_B]), load_texts([("x.yaml", "")]).defaults_location)
    issues = judge_handshake(HandshakeFacts("TLSv1.1", "ECDHE-RSA-AES128-SHA", chain.certs), _match(pinning), now)
    assert [i.kind for i in issues] == ["version_too_low", "weak_suite_allowed", "pin_mismatch"]
    good = Pinning(PinSet.from_strings("p", [spki_pin(chain.intermediate.cert), PIN_A]), pinning.location)
    assert judge_handshake(HandshakeFacts("TLSv1.3", "TLS_AES_128_GCM_SHA256", chain.certs), _match(good), now) == []


def _match(pinning: Pinning) -> Match:
    settings = Settings(sections={"tls": TlsRules(), "certificates": CertRules(), "pins": pinning})
    return Match("a.test", settings, None, None, pinning.location)


def test_failures_are_explained_in_words() -> None:
    rules = TlsRules()
    assert (
        judge_failure("OpenSSL Error([('SSL routines', '', 'sslv3 alert handshake failure')])", 0, [], rules).kind
        == "no_common_suite"
    )
    assert (
        judge_failure("The remote server and mitmproxy cannot agree on a TLS version to use.", 0, [], rules).kind
        == "no_common_protocol"
    )
    assert judge_failure("Certificate verify failed: certificate has expired", 10, [], rules).kind == "expired"
    assert judge_failure("Certificate verify failed: EE certificate key too weak", 66, [], rules).kind == "weak_key"
    assert judge_failure("The remote server does not speak TLS.", 0, [], rules).kind == "not_tls"


def test_handshake_floor_only_drops_for_legacy_rules() -> None:
    assert handshake_floor(TlsRules(), report_mode=False) is None
    assert handshake_floor(TlsRules("1.3"), report_mode=False) is None
    assert handshake_floor(TlsRules("1.1"), report_mode=False) == "1.1"
    assert handshake_floor(TlsRules(), report_mode=True) == "1.0"
