"""`tlsgate import` on each kind of input: source trees, compiled APKs, plists; errors without tracebacks."""

from __future__ import annotations

import plistlib
import shutil
from pathlib import Path

import pytest

from tlsgate.app.cli import main
from tlsgate.policy import load_policy

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "apps" / "fixture.apk"
NSC = """<?xml version="1.0" encoding="utf-8"?>
<network-security-config>
  <domain-config cleartextTrafficPermitted="false">
    <domain includeSubdomains="true">api.example.com</domain>
  </domain-config>
</network-security-config>
"""
MANIFEST = """<manifest xmlns:android="http://schemas.android.com/apk/res/android" package="com.example.src">
  <uses-sdk android:targetSdkVersion="27"/>
  <application android:networkSecurityConfig="@xml/network_security_config"/>
</manifest>
"""


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["import", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_source_tree_manifest_finds_its_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "res" / "xml").mkdir(parents=True)
    (tmp_path / "res" / "xml" / "network_security_config.xml").write_text(NSC)
    (tmp_path / "AndroidManifest.xml").write_text(MANIFEST)
    out = tmp_path / "policy.yaml"
    code, _, err = run(capsys, str(tmp_path / "AndroidManifest.xml"), "--out", str(out))
    assert code == 0, err
    policy = load_policy([out])
    app = policy.match("v2.api.example.com").settings.get("app")
    assert app.cleartext == "forbid" and policy.match("v2.api.example.com").settings.mode == "report"
    assert policy.match("other.org").settings.get("app").cleartext == "permit"  # targetSdkVersion 27: allowed by default
    assert "platform default for targetSdkVersion 27" in out.read_text()


def test_an_nsc_alone_needs_the_target_sdk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nsc = tmp_path / "network_security_config.xml"
    nsc.write_text(NSC)
    code, out, err = run(capsys, str(nsc))
    assert code == 1 and "--target-sdk" in err and out == "" and "Traceback" not in err
    code, out, _ = run(capsys, str(nsc), "--target-sdk", "34", "--mode", "enforce")
    assert code == 0 and "mode: enforce" in out and "targetSdkVersion 34" in out


def test_apk_plist_and_junk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    apk = tmp_path / "renamed.bin"  # recognised by content, not by name
    shutil.copy(FIXTURE, apk)
    code, out, err = run(capsys, str(apk))
    assert code == 0 and "com.example.fixture" in out and "debuggable" in out
    plist = tmp_path / "Info.plist"
    plist.write_bytes(plistlib.dumps({"NSAppTransportSecurity": {"NSAllowsArbitraryLoads": True}}))
    code, out, err = run(capsys, str(plist))
    assert code == 0 and "cleartext: permit" in out and "NSAllowsArbitraryLoads" in err
    junk = tmp_path / "junk.apk"
    junk.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    code, out, err = run(capsys, str(junk))
    assert code == 1 and out == "" and "Traceback" not in err
    code, _, err = run(capsys, str(tmp_path / "missing.apk"))
    assert code == 1 and "No such file" in err
