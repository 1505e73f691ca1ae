"""The `app:` section, ATS-style pin sets, the conformance verdicts, and the policy `tlsgate import` writes."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.certgen import make_chain
from tlsgate.app.appimport import render
from tlsgate.apps.model import AppConfig, Declared, Origin, PinDeclaration
from tlsgate.checks import conformance as c
from tlsgate.checks.model import Check, Effect
from tlsgate.policy import PolicyError, load_texts
from tlsgate.policy.model import Location
from tlsgate.policy.sections.app import AppRules
from tlsgate.policy.sections.pins import Pinning
from tlsgate.tls.pins import PinError, PinSet, parse_pin, spki_pin

CHAIN = make_chain(dns=("api.test",))
LEAF, MID, ROOT = (spki_pin(x.cert) for x in (CHAIN.leaf, CHAIN.intermediate, CHAIN.root))
OTHER = "sha256/" + "Q" * 43 + "="
TODAY = dt.date(2026, 11, 24)


# -- pin sets with Apple's semantics ------------------------------------------------------------------


def scoped(leaf: list[str], ca: list[str]) -> PinSet:
    texts = (*leaf, *ca)
    return PinSet("ats", tuple(parse_pin(t) for t in texts), texts, None, ("leaf",) * len(leaf) + ("ca",) * len(ca))


@pytest.mark.parametrize(
    ("leaf", "ca", "matched"),
    [
        ([LEAF], [], True),
        ([MID], [], False),  # a leaf identity never matches a CA
        ([], [MID], True),
        ([], [ROOT], True),
        ([], [LEAF], False),  # a CA identity never matches the leaf
        ([LEAF], [MID], True),
        ([OTHER], [MID], False),  # both kinds given: each must match
        ([LEAF], [OTHER], False),
    ],
)
def test_ats_pin_sets_need_a_match_in_each_kind(leaf: list[str], ca: list[str], matched: bool) -> None:
    chain = [CHAIN.leaf.cert, CHAIN.intermediate.cert, CHAIN.root.cert]
    assert scoped(leaf, ca).match(chain).matched is matched
    any_set = PinSet.from_strings("android", [*leaf, *ca])  # Android: any pin, any certificate
    assert any_set.match(chain).matched is any(p in (LEAF, MID, ROOT) for p in [*leaf, *ca])


def test_pin_sets_refuse_mixed_scopes() -> None:
    with pytest.raises(PinError, match="mixes"):
        PinSet("x", (b"a" * 32, b"b" * 32), (), None, ("any", "leaf"))


def test_pin_sets_section_reads_leaf_and_ca() -> None:
    policy = load_texts(
        [("p.yaml", f"pin_sets:\n  ats:\n    leaf: [{LEAF}]\n    ca: [{MID}]\nrules:\n  - hosts: [a.test]\n    pins: ats\n")]
    )
    pinning = policy.match("a.test").settings.get("pins")
    assert pinning.pin_set.scopes == ("leaf", "ca") and pinning.pin_set.texts_for("ca") == (MID,)
    with pytest.raises(PolicyError, match="not both"):
        load_texts([("p.yaml", f"pin_sets:\n  x:\n    pins: [{LEAF}]\n    leaf: [{MID}]\n")])


# -- the app section ----------------------------------------------------------------------------------


def test_app_section_reads_every_key_and_resolves_its_pin_set() -> None:
    text = f"""pin_sets:
  app:
    pins: [{LEAF}, {MID}]
    expires: 2027-01-01
rules:
  - hosts: [api.test]
    app:
      source: "nsc.xml:4 <domain-config>"
      platform: ios
      build: debug
      cleartext: forbid
      pins: app
      must_pin: true
      min_version: 1.3
      forward_secrecy: true
      user_cas: trusted
      declared_at: {{cleartext: "nsc.xml:2 <base-config>"}}
"""
    app = load_texts([("p.yaml", text)]).match("api.test").settings.get("app")
    assert isinstance(app, AppRules) and app.pinning is not None and app.pinning.pin_set.expires == dt.date(2027, 1, 1)
    assert (app.platform, app.build, app.cleartext, app.must_pin, app.min_version) == ("ios", "debug", "forbid", True, "1.3")
    assert app.where("cleartext") == "nsc.xml:2 <base-config>" and app.where("pins") == "nsc.xml:4 <domain-config>"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{cleartext: forbid}", "needs 'source'"),
        ("{source: x, cleartext: maybe}", "app.cleartext must be one of"),
        ("{source: x, pins: nope}", "unknown pin set 'nope'"),
        ("{source: x, min_version: 2.0}", "app.min_version must be one of"),
        ("{source: x, declared_at: {colour: red}}", "unknown key 'colour'"),
        ("{source: x, must_pin: yes please}", "must be true or false"),
    ],
)
def test_app_section_errors_are_located(body: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        load_texts([("p.yaml", f"rules:\n  - hosts: [a.test]\n    app: {body}\n")])


# -- verdicts -----------------------------------------------------------------------------------------


def rules(**kw) -> AppRules:
    return AppRules(source="nsc.xml:4 <domain-config>", declared_at={"pins": "nsc.xml:6 <pin-set>"}, **kw)


def pinning(pins: list[str], expires: dt.date | None = None) -> Pinning:
    return Pinning(PinSet.from_strings("app", pins, expires), Location("p.yaml", 3))


def test_cleartext_is_judged_only_where_the_app_forbids_it() -> None:
    assert c.judge_cleartext(rules(cleartext="permit"), "a.test", "GET http://a.test/") == []
    assert c.judge_cleartext(None, "a.test", "GET http://a.test/") == []
    (issue,) = c.judge_cleartext(rules(cleartext="forbid"), "a.test", "GET http://a.test/")
    assert (issue.check, issue.kind, issue.effect) == (Check.CONFORMANCE, "cleartext_forbidden", Effect.ENFORCED)
    assert issue.evidence["declared_at"] == "nsc.xml:4 <domain-config>"


def test_pin_mismatch_says_the_days_left_and_expiry_soon_is_its_own_finding() -> None:
    chain = [CHAIN.leaf.cert, CHAIN.intermediate.cert, CHAIN.root.cert]
    soon = TODAY + dt.timedelta(days=c.EXPIRY_HORIZON_DAYS)
    kinds = {i.kind: i for i in c.judge_server(rules(pins=pinning([OTHER], soon)), "TLSv1.3", None, chain, TODAY)}
    assert set(kinds) == {"pin_mismatch", "pins_expire_soon"}
    assert kinds["pin_mismatch"].evidence["days_left"] == {"app": 30} and "30 day(s) left" in kinds["pin_mismatch"].detail
    assert kinds["pin_mismatch"].evidence["declared_at"] == "nsc.xml:6 <pin-set>"
    later = TODAY + dt.timedelta(days=c.EXPIRY_HORIZON_DAYS + 1)
    assert c.judge_server(rules(pins=pinning([MID], later)), "TLSv1.3", None, chain, TODAY) == []
    (expired,) = c.judge_server(rules(pins=pinning([OTHER], TODAY)), "TLSv1.3", None, chain, TODAY)
    assert expired.kind == "pins_expired" and expired.effect is Effect.RECORD  # Android no longer enforces them
    (never,) = c.judge_server(rules(pins=pinning([OTHER])), "TLSv1.3", None, chain, TODAY)
    assert never.evidence["days_left"] == {"app": None}


def test_declared_minimum_and_forward_secrecy() -> None:
    app = rules(min_version="1.3", forward_secrecy=True)
    kinds = [i.kind for i in c.judge_server(app, "TLSv1.2", "AES128-GCM-SHA256", [CHAIN.leaf.cert], TODAY)]
    assert kinds == ["below_declared_min_version", "no_forward_secrecy"]
    assert c.judge_server(app, "TLSv1.3", "TLS_AES_128_GCM_SHA256", [CHAIN.leaf.cert], TODAY) == []
    assert c.judge_server(rules(min_version="1.2"), "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", [], TODAY) == []
    (client,) = c.judge_client_version(app, "1.2")
    assert client.evidence["side"] == "client" and client.effect is Effect.RECORD
    assert c.judge_client_version(app, "1.3") == [] and c.judge_client_version(app, None) == []


def test_user_cas_matter_in_release_builds_only() -> None:
    assert c.judge_user_cas(rules(user_cas="trusted", build="debug"), "a.test") == []
    assert c.judge_user_cas(rules(user_cas="untrusted"), "a.test") == []
    assert c.judge_user_cas(rules(user_cas="trusted"), "a.test")[0].kind == "user_cas_in_release"


def test_refusals_are_read_against_the_device() -> None:
    app = rules(must_pin=True)
    assert c.refused(app, "api.test", "unknown ca", ["www.test"], []).kind == "pinned"
    assert c.refused(app, "api.test", "unknown ca", ["www.test"], ["cdn.test"]).effect is Effect.PASSED
    missing = c.refused(app, "api.test", "unknown ca", [], ["www.test"])
    assert missing.kind == "ca_not_installed" and missing.evidence["refused_for"] == ["www.test"]
    assert c.refused(app, "api.test", "unknown ca", [], []).kind == "undetermined"
    assert c.not_pinned(app, "api.test", "GET https://api.test/").effect is Effect.ENFORCED


def test_device_memory_is_bounded_and_excludes_the_host_itself() -> None:
    trust = c.DeviceTrust(devices=2, hosts=2)
    for host in ("a", "b", "c"):
        trust.accepted("phone", host)
    trust.refused("phone", "api", "unknown ca")
    assert trust.evidence("phone", "c") == (["b"], ["api"])
    trust.accepted("tablet", "x")
    trust.accepted("tv", "y")
    assert trust.evidence("phone", "z") == ([], [])  # the least recently seen device was forgotten


# -- what `tlsgate import` writes ---------------------------------------------------------------------


def config_with_everything() -> AppConfig:
    origin = Origin("res/xml/nsc.xml", 4, "<domain-config>")
    pins = PinDeclaration([LEAF, MID], ["leaf", "ca"], Origin("Info.plist", None, 'NSPinnedDomains["api.test"]'))
    declared = Declared(["api.test", "*.api.test"], origin, pins=pins)
    declared.values = {
        "cleartext": ("forbid", origin),
        "min_version": ("1.3", origin),
        "forward_secrecy": (False, origin),
        "user_cas": ("trusted", origin),
        "must_pin": (True, pins.origin),
        "pins": (True, pins.origin),
    }
    declared.notes.append("a note with a newline\nand a 'quote\"")
    base = Declared([], Origin("AndroidManifest.xml", 3, "platform default"), {"cleartext": ("permit", origin)})
    return AppConfig("ios", "com.ex\nample", "release", ["App.ipa"], base, [declared], [], ["fact"])


@pytest.mark.parametrize("mode", ["report", "enforce"])
def test_the_written_policy_validates_and_every_key_names_its_source(mode: str) -> None:
    text = render(config_with_everything(), mode, TODAY, "out.yaml")
    policy = load_texts([("out.yaml", text)])
    app = policy.match("x.api.test").settings.get("app")
    assert policy.match("x.api.test").settings.mode == mode
    assert app.pinning.pin_set.scopes == ("leaf", "ca") and app.min_version == "1.3" and app.forward_secrecy is False
    assert app.where("must_pin") == 'Info.plist NSPinnedDomains["api.test"]'
    for line in text.splitlines():
        key = line.strip().split(":")[0]
        if key in ("cleartext", "min_version", "forward_secrecy", "user_cas", "must_pin", "pins") and line.startswith("    "):
            assert "  # " in line or line.strip().startswith(f'{key}: "'), line


def test_cleartext_streams_are_recorded_not_blocked_by_this_check() -> None:
    assert c.judge_cleartext_stream(rules(cleartext="permit"), "b.test", "mqtt") == []
    (issue,) = c.judge_cleartext_stream(rules(cleartext="forbid"), "b.test", "mqtt")
    assert (issue.kind, issue.effect, issue.evidence["protocol"]) == ("cleartext_forbidden", Effect.RECORD, "mqtt")
