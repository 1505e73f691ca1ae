"""Android Network Security Config semantics: defaults by target SDK, inheritance, pins, trust anchors, overrides."""

from __future__ import annotations

import datetime as dt

import pytest

from tlsgate.apps.android import Manifest, no_nsc, parse_xml_text, read_nsc
from tlsgate.apps.axml import Element
from tlsgate.apps.model import AppConfig, AppFormatError, Declared

PIN_A = "sha256/" + "A" * 43 + "="
PIN_B = "sha256/" + "B" * 43 + "="
TODAY = dt.date(2026, 11, 24)


def manifest(target: int = 34, debuggable: bool = False, cleartext: str | None = None) -> Manifest:
    app = {"networkSecurityConfig": "@0x7f020000"}
    if debuggable:
        app["debuggable"] = "true"
    if cleartext is not None:
        app["usesCleartextTraffic"] = cleartext
    root = Element(
        "manifest",
        {"package": "com.example"},
        2,
        [Element("uses-sdk", {"targetSdkVersion": str(target)}, 3), Element("application", app, 4)],
    )
    return Manifest(root, "AndroidManifest.xml")


def read(xml: str, **kw) -> AppConfig:
    build = kw.pop("build", None)
    return read_nsc(xml.encode(), "nsc.xml", manifest(**kw), build, TODAY)


def domain(config: AppConfig, host: str) -> Declared:
    (found,) = [d for d in config.domains if host in d.hosts]
    return found


def value(declared: Declared, key: str) -> tuple[object, str]:
    v, origin = declared.values[key]
    return v, str(origin)


def test_defaults_follow_the_target_sdk() -> None:
    empty = "<network-security-config/>"
    modern, old, ancient = read(empty, target=34), read(empty, target=27), read(empty, target=23)
    assert value(modern.base, "cleartext")[0] == "forbid" and value(old.base, "cleartext")[0] == "permit"
    assert value(modern.base, "user_cas")[0] == "untrusted" and value(old.base, "user_cas")[0] == "untrusted"
    assert value(ancient.base, "user_cas")[0] == "trusted"  # API 23 and below trust user CAs by default
    assert "platform default for targetSdkVersion 34" in value(modern.base, "cleartext")[1]
    assert any("trusts user-installed CAs" in w.message for w in ancient.warnings)  # release build


def test_uses_cleartext_traffic_is_ignored_with_an_nsc_and_decides_without_one() -> None:
    config = read("<network-security-config/>", cleartext="true")
    assert value(config.base, "cleartext")[0] == "forbid"
    assert any("usesCleartextTraffic" in str(w) and "ignored" in w.message for w in config.warnings)
    without = no_nsc(manifest(cleartext="true"))
    assert value(without.base, "cleartext") == ("permit", 'AndroidManifest.xml:4 <application usesCleartextTraffic="true">')


NESTED = f"""<network-security-config>
  <base-config cleartextTrafficPermitted="true">
    <trust-anchors><certificates src="system"/></trust-anchors>
  </base-config>
  <domain-config cleartextTrafficPermitted="false">
    <domain includeSubdomains="true">Example.com</domain>
    <pin-set expiration="2027-01-01">
      <pin digest="SHA-256">{PIN_A[7:]}</pin>
      <pin digest="SHA-256">{PIN_B[7:]}</pin>
    </pin-set>
    <domain-config cleartextTrafficPermitted="true">
      <domain>legacy.example.com</domain>
    </domain-config>
    <domain-config>
      <domain includeSubdomains="true">cdn.example.com</domain>
      <trust-anchors><certificates src="user"/></trust-anchors>
    </domain-config>
  </domain-config>
  <domain-config><domain>other.org</domain></domain-config>
</network-security-config>
"""


def test_nested_domain_configs_inherit_what_they_do_not_set() -> None:
    config = read(NESTED)
    parent = domain(config, "example.com")
    assert parent.hosts == ["example.com", "*.example.com"]  # includeSubdomains, lower-cased
    assert value(parent, "cleartext") == ("forbid", 'nsc.xml:5 <domain-config cleartextTrafficPermitted="false">')
    legacy = domain(config, "legacy.example.com")
    assert legacy.hosts == ["legacy.example.com"]
    assert value(legacy, "cleartext")[0] == "permit"
    assert legacy.pins is parent.pins and value(legacy, "must_pin")[0] is True  # the pin set is inherited
    cdn = domain(config, "cdn.example.com")
    assert value(cdn, "cleartext")[1].startswith("nsc.xml:5 ")  # from the parent, not the base-config
    assert value(cdn, "user_cas") == ("trusted", "nsc.xml:16 <trust-anchors>")
    other = domain(config, "other.org")
    assert value(other, "cleartext") == ("permit", 'nsc.xml:2 <base-config cleartextTrafficPermitted="true">')
    assert other.pins is None and "must_pin" not in other.values
    assert parent.pins is not None and parent.pins.expires == dt.date(2027, 1, 1) and parent.pins.pins == [PIN_A, PIN_B]


@pytest.mark.parametrize(
    ("anchors", "pins", "must_pin", "said"),
    [
        ('<certificates src="system" overridePins="true"/>', False, None, "overridden for system CAs"),
        ('<certificates src="system"/><certificates src="user" overridePins="true"/>', True, False, "user CAs override"),
        ('<certificates src="system"/><certificates src="user"/>', True, True, None),
    ],
)
def test_override_pins(anchors: str, pins: bool, must_pin: bool | None, said: str | None) -> None:
    config = read(
        f"""<network-security-config><domain-config><domain>api.test</domain>
        <trust-anchors>{anchors}</trust-anchors>
        <pin-set><pin digest="SHA-256">{PIN_A[7:]}</pin></pin-set></domain-config></network-security-config>"""
    )
    declared = domain(config, "api.test")
    assert (declared.pins is not None) is pins
    assert declared.values.get("must_pin", (None,))[0] is must_pin
    if said:
        assert any(said in w.message for w in config.warnings)


def test_debug_overrides_apply_to_debuggable_builds_only() -> None:
    xml = """<network-security-config><debug-overrides><trust-anchors><certificates src="user"/></trust-anchors>
    </debug-overrides><domain-config><domain>api.test</domain></domain-config></network-security-config>"""
    release, debug = read(xml), read(xml, debuggable=True)
    assert release.build == "release" and debug.build == "debug"
    assert value(domain(release, "api.test"), "user_cas")[0] == "untrusted"
    assert any("debuggable builds only" in w.message for w in release.warnings)
    assert value(domain(debug, "api.test"), "user_cas")[0] == "trusted"
    assert value(debug.base, "user_cas")[0] == "trusted"
    assert read(xml, build="debug").build == "debug"  # --build overrides the manifest


def test_what_cannot_be_held_to_is_warned_about_not_dropped() -> None:
    config = read(
        f"""<network-security-config>
  <base-config hstsEnforced="true"><pin-set/></base-config>
  <domain-config>
    <domain>api.test</domain>
    <trust-anchors><certificates src="@raw/my_ca"/></trust-anchors>
    <pin-set expiration="2020-01-01"><pin digest="SHA-1">{PIN_A[7:]}</pin><pin digest="SHA-256">{PIN_B[7:]}</pin></pin-set>
  </domain-config>
  <domain-config><domain>api.test</domain></domain-config>
  <domain-config><domain>*.wild.test</domain></domain-config>
  <certificateTransparency enabled="true"/>
</network-security-config>"""
    )
    said = "\n".join(str(w) for w in config.warnings)
    for expected in (
        "hstsEnforced",
        "<pin-set> is not allowed in <base-config>",
        "--upstream-ca",
        "Android accepts only SHA-256",
        "expired on 2020-01-01",
        "Android refuses duplicate domains",
        "takes no wildcards",
        "unknown element <certificateTransparency>",
    ):
        assert expected in said, expected
    assert domain(config, "api.test").pins.pins == [PIN_B]  # type: ignore[union-attr]


def test_hostile_xml_is_refused() -> None:
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><x>&b;</x>'
    with pytest.raises(AppFormatError, match="DOCTYPE"):
        parse_xml_text(bomb, "bomb.xml")
    with pytest.raises(AppFormatError, match="not well-formed"):
        parse_xml_text(b"<network-security-config>", "cut.xml")
    with pytest.raises(AppFormatError, match="nested too deeply"):
        parse_xml_text(b"<a>" * 100 + b"</a>" * 100, "deep.xml")
    with pytest.raises(AppFormatError, match="not <network-security-config>"):
        read("<manifest/>")


def test_domains_are_spelled_as_tlsgate_matches_them() -> None:
    config = read(
        """<network-security-config>
  <domain-config><domain>Bücher.Example.</domain></domain-config>
  <domain-config><domain>evil.test/path"quote</domain></domain-config>
</network-security-config>"""
    )
    assert [d.hosts for d in config.domains] == [["xn--bcher-kva.example"]]
    assert any("is not a host name" in w.message for w in config.warnings)


def test_declared_domains_are_encoded_as_android_encodes_them_idna_2008() -> None:
    """Android reaches `faß.de` at xn--fa-hia.de; the IDNA 2003 spelling fass.de is another host."""
    config = read("<network-security-config><domain-config><domain>faß.de</domain></domain-config></network-security-config>")
    assert [d.hosts for d in config.domains] == [["xn--fa-hia.de"]]


def test_the_import_says_what_needs_doing_before_traffic_shows_it() -> None:
    soon = (TODAY + dt.timedelta(days=12)).isoformat()
    config = read(
        f"""<network-security-config>
  <domain-config><domain>api.test</domain>
    <pin-set expiration="{soon}"><pin digest="SHA-256">{PIN_A[7:]}</pin></pin-set></domain-config>
  <domain-config><domain>cdn.test</domain>
    <trust-anchors><certificates src="system"/><certificates src="user"/></trust-anchors></domain-config>
</network-security-config>"""
    )
    said = "\n".join(str(w) for w in config.warnings)
    assert f"expires in 12 day(s): ship new pins before {soon}" in said
    assert "nsc.xml:5 <trust-anchors>: this release build trusts user-installed CAs for cdn.test" in said
    assert not [w for w in read("<network-security-config/>").warnings if "user-installed" in w.message]
