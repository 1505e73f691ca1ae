"""App Transport Security semantics: defaults, arbitrary loads and what overrides it, exception domains, pinned domains."""

from __future__ import annotations

import base64
import plistlib
import zipfile
from pathlib import Path

import pytest

from tlsgate.apps.ios import read_ipa, read_plist
from tlsgate.apps.model import AppConfig, AppFormatError, Declared

SPKI_A = base64.b64encode(b"a" * 32).decode()
SPKI_B = base64.b64encode(b"b" * 32).decode()


def read(ats: dict | None, binary: bool = True) -> AppConfig:
    info: dict = {"CFBundleIdentifier": "com.example.app"}
    if ats is not None:
        info["NSAppTransportSecurity"] = ats
    data = plistlib.dumps(info, fmt=plistlib.FMT_BINARY if binary else plistlib.FMT_XML)
    return read_plist(data, "Info.plist")


def domain(config: AppConfig, pattern: str) -> Declared:
    (found,) = [d for d in config.domains if pattern in d.hosts]
    return found


def values(declared: Declared) -> dict[str, object]:
    return {k: v for k, (v, _) in declared.values.items()}


@pytest.mark.parametrize("binary", [True, False])
def test_ats_defaults_hold_every_host_in_xml_and_binary_plists(binary: bool) -> None:
    config = read(None, binary)
    assert values(config.base) == {"cleartext": "forbid", "min_version": "1.2", "forward_secrecy": True}
    assert config.domains == [] and "absent" in config.warnings[0].message
    assert ("binary" if binary else "XML") in config.facts[0]


def test_arbitrary_loads_turn_ats_off_except_for_exception_domains() -> None:
    config = read(
        {
            "NSAllowsArbitraryLoads": True,
            "NSExceptionDomains": {
                "api.test": {"NSIncludesSubdomains": True, "NSExceptionMinimumTLSVersion": "TLSv1.3"},
                "old.test": {
                    "NSExceptionAllowsInsecureHTTPLoads": True,
                    "NSExceptionRequiresForwardSecrecy": False,
                    "NSThirdPartyExceptionMinimumTLSVersion": "TLSv1.0",
                },
            },
        }
    )
    assert values(config.base) == {"cleartext": "permit"}
    api = domain(config, "api.test")
    assert api.hosts == ["api.test", "*.api.test"]
    assert values(api) == {"cleartext": "forbid", "min_version": "1.3", "forward_secrecy": True}
    assert (
        str(api.values["min_version"][1])
        == 'Info.plist NSAppTransportSecurity.NSExceptionDomains["api.test"].NSExceptionMinimumTLSVersion'
    )
    assert values(domain(config, "old.test")) == {"cleartext": "permit", "min_version": "1.0", "forward_secrecy": False}


@pytest.mark.parametrize(
    "key", ["NSAllowsArbitraryLoadsInWebContent", "NSAllowsArbitraryLoadsForMedia", "NSAllowsLocalNetworking"]
)
def test_arbitrary_loads_is_ignored_next_to_the_finer_keys(key: str) -> None:
    config = read({"NSAllowsArbitraryLoads": True, key: True})
    assert values(config.base)["cleartext"] == "forbid"
    said = "\n".join(str(w) for w in config.warnings)
    assert "ignored since iOS 10" in said and key in said


def test_pinned_domains_keep_leaf_and_ca_apart_and_group_by_subdomain_coverage() -> None:
    config = read(
        {
            "NSExceptionDomains": {"example.com": {"NSIncludesSubdomains": True, "NSRequiresCertificateTransparency": True}},
            "NSPinnedDomains": {
                "api.example.com": {
                    "NSPinnedCAIdentities": [{"SPKI-SHA256-BASE64": SPKI_A}],
                    "NSPinnedLeafIdentities": [{"SPKI-SHA256-BASE64": SPKI_B}, {"SPKI-SHA256-BASE64": "short"}],
                },
            },
        }
    )
    api = domain(config, "api.example.com")
    assert api.hosts == ["api.example.com"]  # the pin does not include subdomains ...
    assert api.pins is not None and api.pins.scopes == ["leaf", "ca"]
    assert api.pins.pins == [f"sha256/{SPKI_B}", f"sha256/{SPKI_A}"]
    assert values(api)["must_pin"] is True and values(api)["min_version"] == "1.2"  # ... and keeps the exception's rules
    rest = domain(config, "*.example.com")
    assert rest.hosts == ["example.com", "*.example.com"] and rest.pins is None
    said = "\n".join(str(w) for w in config.warnings)
    assert "certificate transparency" in said and "identity not read" in said


def test_malformed_entries_are_warned_about() -> None:
    config = read(
        {
            "NSAllowsArbitraryLoads": "YES",
            "NSExceptionDomains": {"API.test.": {"NSExceptionMinimumTLSVersion": "TLSv2", "NSBogus": 1}, "*.x.test": {}},
            "NSPinnedDomains": {"p.test": {"NSPinnedLeafIdentities": []}},
            "NSSomething": 1,
        }
    )
    said = "\n".join(str(w) for w in config.warnings)
    for expected in ("must be a Boolean", "read as api.test", "not one of", "unknown exception-domain key NSBogus",
                     "takes no wildcards", "ATS refuses every connection", "unknown ATS key NSSomething"):  # fmt: skip
        assert expected in said, expected
    assert values(domain(config, "api.test"))["min_version"] == "1.2"


def test_ipa_reads_the_apps_own_plist(tmp_path: Path) -> None:
    ipa = tmp_path / "App.ipa"
    with zipfile.ZipFile(ipa, "w") as archive:
        archive.writestr("Payload/App.app/Info.plist", plistlib.dumps({"CFBundleIdentifier": "com.app"}, fmt=plistlib.FMT_BINARY))
        archive.writestr("Payload/App.app/PlugIns/Ext.appex/Info.plist", plistlib.dumps({"CFBundleIdentifier": "ext"}))
    config = read_ipa(ipa)
    assert config.app_id == "com.app" and config.files == [str(ipa), "Payload/App.app/Info.plist"]
    with pytest.raises(AppFormatError, match="not a property list"):
        read_plist(b"bplist00garbage", "x.plist")
    (tmp_path / "bad.ipa").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(AppFormatError):
        read_ipa(tmp_path / "bad.ipa")


def test_a_self_referencing_binary_plist_is_read_without_recursing() -> None:
    import struct

    # one dictionary whose NSAppTransportSecurity is itself: bplist00, a dict of 1 key/value, refs 1 (key) and 0 (itself)
    key = b"\x5f\x10\x16NSAppTransportSecurity"
    objects = [b"\xd1\x01\x00", key]
    body, offsets = b"", []
    for item in objects:
        offsets.append(8 + len(body))
        body += item
    trailer = struct.pack(">6xBBQQQ", 1, 1, len(objects), 0, 8 + len(body))
    config = read_plist(b"bplist00" + body + bytes(offsets) + trailer, "Info.plist")
    assert config.base.values["cleartext"][0] == "forbid"
    assert any("unknown ATS key NSAppTransportSecurity" in w.message for w in config.warnings)
