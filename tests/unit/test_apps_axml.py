"""Android binary XML and resources.arsc: read what aapt wrote, and never crash on what it did not."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import random
import zipfile
from pathlib import Path

import pytest

from tlsgate.apps.android import parse_any_xml, read_apk
from tlsgate.apps.axml import parse_axml, resolve_file_reference
from tlsgate.apps.model import AppFormatError

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "apps" / "fixture.apk"  # see tests/data/apps/README.md


def member(name: str) -> bytes:
    with zipfile.ZipFile(FIXTURE) as apk:
        return apk.read(name)


def test_compiled_manifest_and_config_read_as_their_sources() -> None:
    manifest = parse_axml(member("AndroidManifest.xml"))
    assert manifest.tag == "manifest" and manifest.attrs["package"] == "com.example.fixture"
    assert manifest.find("uses-sdk").attrs["targetSdkVersion"] == "30"  # type: ignore[union-attr]
    application = manifest.find("application")
    assert application is not None and application.attrs["debuggable"] == "true"
    reference = application.attrs["networkSecurityConfig"]
    assert reference.startswith("@0x7f")
    assert resolve_file_reference(member("resources.arsc"), int(reference[1:], 16)) == ["res/xml/network_security_config.xml"]
    nsc = parse_axml(member("res/xml/network_security_config.xml"))
    domain = nsc.children[1].children[0]
    assert (domain.tag, domain.attrs, domain.text, domain.line) == (
        "domain",
        {"includeSubdomains": "true"},
        "legacy.example.com",
        7,
    )


def test_the_apk_reads_with_its_manifest_defaults() -> None:
    config = read_apk(FIXTURE, today=dt.date(2026, 1, 1))
    assert (config.app_id, config.build) == ("com.example.fixture", "debug")
    (legacy,) = config.domains
    assert legacy.hosts == ["legacy.example.com", "*.legacy.example.com"]
    assert legacy.values["cleartext"][0] == "permit" and legacy.values["user_cas"][0] == "trusted"  # debug-overrides
    assert (
        str(legacy.values["cleartext"][1])
        == 'res/xml/network_security_config.xml:6 <domain-config cleartextTrafficPermitted="true">'
    )
    assert legacy.pins is not None and legacy.pins.expires == dt.date(2030, 1, 1) and len(legacy.pins.pins) == 2
    release = read_apk(FIXTURE, build="release", today=dt.date(2026, 1, 1))
    assert release.domains[0].values["user_cas"][0] == "untrusted"


@pytest.mark.parametrize("name", ["AndroidManifest.xml", "res/xml/network_security_config.xml"])
def test_truncated_and_mutated_binary_xml_fails_cleanly(name: str) -> None:
    data = member(name)
    rng = random.Random(13)  # reproducible
    candidates = [data[:cut] for cut in range(0, len(data), 7)]
    for _ in range(400):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        candidates.append(bytes(mutated))
    for blob in candidates:
        with contextlib.suppress(AppFormatError):
            parse_any_xml(blob, name)


def test_mutated_resource_tables_and_archives_fail_cleanly(tmp_path: Path) -> None:
    table = member("resources.arsc")
    rng = random.Random(7)
    for _ in range(300):
        mutated = bytearray(table)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        apk = tmp_path / "m.apk"
        buffer = io.BytesIO()
        with zipfile.ZipFile(FIXTURE) as source, zipfile.ZipFile(buffer, "w") as target:
            for item in source.infolist():
                target.writestr(item.filename, bytes(mutated) if item.filename == "resources.arsc" else source.read(item))
        apk.write_bytes(buffer.getvalue())
        with contextlib.suppress(AppFormatError):
            read_apk(apk)


def test_an_archive_member_that_would_inflate_too_far_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tlsgate.apps.ziparchive.MAX_INPUT", 1000)
    apk = tmp_path / "big.apk"
    with zipfile.ZipFile(apk, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("AndroidManifest.xml", b"\x00" * 5000)
    with pytest.raises(AppFormatError, match="larger than"):
        read_apk(apk)
