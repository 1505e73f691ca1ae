"""Holding an app to its own declarations, end to end: a real APK built by aapt and a zipped IPA with a binary
plist are imported by `tlsgate import`, validated, run, and real curl clients break each promise in turn.

The pinning assertion: curl with `--pinnedpubkey` (pins, so refuses tlsgate's certificate), plain curl trusting
tlsgate's CA (does not pin), and curl without the CA (CA not installed), told apart per device (source address).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import plistlib
import shutil
import socket
import ssl
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.certgen import Chain, make_leaf
from tests.harness import Tlsgate, Upstream, curl, eventually
from tests.plainpeers import RecordingServer, mqtt_connect
from tests.tlsservers import RawTlsServer, tls_upstream
from tlsgate.tls.pins import spki_digest, spki_pin

FRAMEWORK = Path("/usr/share/android-framework-res/framework-res.apk")  # Debian's android-framework-res
WRONG_PIN = base64.b64encode(hashlib.sha256(b"a key this server never had").digest()).decode()
OTHER_PIN = base64.b64encode(hashlib.sha256(b"the backup key, also absent").digest()).decode()


def tlsgate_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tlsgate", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def build_apk(directory: Path, manifest: str, nsc: str) -> Path:
    """A real APK: aapt compiles the manifest and res/xml/network_security_config.xml into binary XML + resources.arsc."""
    if shutil.which("aapt") is None or not FRAMEWORK.exists():
        pytest.fail(
            "building a real APK needs Debian's aapt and android-framework-res (apt-get install aapt android-framework-res)"
        )
    source = directory / "apk-src"
    (source / "res" / "xml").mkdir(parents=True)
    (source / "AndroidManifest.xml").write_text(manifest)
    (source / "res" / "xml" / "network_security_config.xml").write_text(nsc)
    apk = directory / "app.apk"
    subprocess.run(
        ["aapt", "package", "-f", "-M", str(source / "AndroidManifest.xml"), "-S", str(source / "res"),
         "-I", str(FRAMEWORK), "-F", str(apk)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with zipfile.ZipFile(apk) as archive:
        compiled = archive.read("res/xml/network_security_config.xml")
    assert compiled[:2] == b"\x03\x00", "aapt must have compiled the config to binary XML"
    return apk


def build_ipa(directory: Path, info: dict) -> Path:
    """An IPA as Xcode exports one: a zip with Payload/<Name>.app/Info.plist in binary plist form."""
    ipa = directory / "App.ipa"
    with zipfile.ZipFile(ipa, "w") as archive:
        archive.writestr("Payload/App.app/Info.plist", plistlib.dumps(info, fmt=plistlib.FMT_BINARY))
        archive.writestr("Payload/App.app/App", b"\xcf\xfa\xed\xfe")
        # a framework's own plist must not be taken for the app's
        archive.writestr("Payload/App.app/Frameworks/Sdk.framework/Info.plist", plistlib.dumps({"CFBundleIdentifier": "sdk"}))
    return ipa


def import_app(app: Path, directory: Path, *extra: str) -> tuple[Path, str]:
    out = directory / "app-policy.yaml"
    done = tlsgate_cli("import", str(app), "--out", str(out), *extra, cwd=directory)
    assert done.returncode == 0, done.stderr
    validated = tlsgate_cli("validate", str(out), cwd=directory)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    return out, done.stderr


def start(directory: Path, policy: Path, root_file: Path, hosts: tuple[str, ...]) -> Tlsgate:
    args = ["--policy", str(policy), "--upstream-ca", str(root_file)]
    for host in hosts:
        args += ["--resolve", f"{host}:*:127.0.0.1"]
    return Tlsgate(directory, args).start()


def by_kind(findings: list[dict], check: str, kind: str) -> list[dict]:
    return [f for f in findings if f["check"] == check and f["evidence"].get("kind") == kind]


def wait_kind(gate: Tlsgate, check: str, kind: str) -> dict:
    assert eventually(lambda: by_kind(gate.findings(), check, kind), timeout=15), (check, kind, gate.findings(), gate.output)
    return by_kind(gate.findings(), check, kind)[0]


MANIFEST = """<?xml version="1.0" encoding="utf-8"?>
<manifest xmlns:android="http://schemas.android.com/apk/res/android" package="com.example.shop">
  <uses-sdk android:minSdkVersion="24" android:targetSdkVersion="34"/>
  <application android:networkSecurityConfig="@xml/network_security_config" android:usesCleartextTraffic="true"/>
</manifest>
"""


def nsc(expiration: dt.date) -> str:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<network-security-config>
  <base-config cleartextTrafficPermitted="true"/>
  <domain-config cleartextTrafficPermitted="false">
    <domain includeSubdomains="true">api.test</domain>
    <pin-set expiration="{expiration.isoformat()}">
      <pin digest="SHA-256">{WRONG_PIN}</pin>
      <pin digest="SHA-256">{OTHER_PIN}</pin>
    </pin-set>
  </domain-config>
  <domain-config>
    <domain>cdn.test</domain>
    <trust-anchors>
      <certificates src="system"/>
      <certificates src="user"/>
    </trust-anchors>
  </domain-config>
</network-security-config>
"""


@pytest.fixture
def upstreams(pki, http_upstream: Upstream, https_upstream: Upstream):
    return http_upstream, https_upstream


def test_apk_import_and_every_android_broken_promise(pki, upstreams, tmp_path: Path) -> None:
    _, root_file, _, _ = pki
    http, https = upstreams
    apk = build_apk(tmp_path, MANIFEST, nsc(dt.date.today() + dt.timedelta(days=10)))
    policy, warnings = import_app(apk, tmp_path)
    text = policy.read_text()
    assert "usesCleartextTraffic" in warnings and "ignored" in warnings  # the manifest flag an NSC overrides, said
    assert "mode: report" in text and "# res/xml/network_security_config.xml:4 <domain-config" in text
    assert '"api.test", "*.api.test"' in text  # includeSubdomains
    gate = start(tmp_path, policy, root_file, ("api.test", "cdn.test", "www.test"))
    ca = str(gate.ca_cert)

    # 1. cleartext to a domain the app forbids it for: reported (report mode), forwarded.
    sent = curl(gate.proxy_url, f"http://api.test:{http.port}/login")
    assert sent.status == 200 and len(http.requests) == 1
    finding = wait_kind(gate, "conformance", "cleartext_forbidden")
    assert finding["action"] == "reported"
    assert finding["evidence"]["declared_at"] == (
        'res/xml/network_security_config.xml:4 <domain-config cleartextTrafficPermitted="false">'
    )
    # www.test inherits the base-config's permission: no conformance finding for its cleartext
    assert curl(gate.proxy_url, f"http://www.test:{http.port}/").status == 200

    # 2. a chain matching none of the app's pins, with the days the pin set has left, and its expiry soon.
    assert curl(gate.proxy_url, f"https://api.test:{https.port}/", "--cacert", ca).status == 200
    mismatch = wait_kind(gate, "conformance", "pin_mismatch")
    assert mismatch["evidence"]["days_left"] == {"com-example-shop-pins-1": 10}
    assert mismatch["evidence"]["declared_at"].startswith("res/xml/network_security_config.xml:6 <pin-set expiration=")
    soon = wait_kind(gate, "conformance", "pins_expire_soon")
    assert "10 day(s)" in soon["detail"]
    # the app pins api.test, yet this client took tlsgate's certificate and sent its request
    assert wait_kind(gate, "pinning", "not_pinned")["action"] == "reported"

    # 3. a release build trusting user CAs (cdn.test's trust-anchors) took tlsgate's certificate.
    assert curl(gate.proxy_url, f"https://cdn.test:{https.port}/", "--cacert", ca).status == 200
    user_cas = wait_kind(gate, "conformance", "user_cas_in_release")
    assert user_cas["evidence"]["declared_at"].startswith("res/xml/network_security_config.xml:13 <trust-anchors>")
    assert not [f for f in gate.findings() if f["check"] == "conformance" and f["host"] == "www.test"]
    gate.stop()


def test_apk_import_in_enforce_mode_blocks_before_the_upstream_sees_a_request(pki, upstreams, tmp_path: Path) -> None:
    _, root_file, _, _ = pki
    http, https = upstreams
    apk = build_apk(tmp_path, MANIFEST, nsc(dt.date.today() + dt.timedelta(days=400)))
    policy, _ = import_app(apk, tmp_path, "--mode", "enforce")
    gate = start(tmp_path, policy, root_file, ("api.test",))
    plain = curl(gate.proxy_url, f"http://api.test:{http.port}/")
    assert plain.status == 403 and http.connections == 0
    tls = curl(gate.proxy_url, f"https://api.test:{https.port}/", "--cacert", str(gate.ca_cert))
    assert tls.status == 403 and https.requests == []
    assert plain.headers["x-tlsgate-check"] in ("cleartext", "conformance")  # tlsgate's own cleartext rule may answer first
    assert tls.headers["x-tlsgate-check"] == "pinning" and "network_security_config.xml:4" in tls.body
    blocked = {(f["check"], f["evidence"]["kind"]) for f in gate.wait_findings(3) if f["action"] == "blocked"}
    assert {("conformance", "cleartext_forbidden"), ("conformance", "pin_mismatch"), ("pinning", "not_pinned")} <= blocked
    gate.stop()


def ipa_info(chain: Chain) -> dict:
    return {
        "CFBundleIdentifier": "com.example.shop",
        "CFBundleShortVersionString": "3.1",
        "NSAppTransportSecurity": {
            "NSAllowsArbitraryLoads": True,
            "NSExceptionDomains": {
                "api.test": {"NSIncludesSubdomains": True, "NSExceptionMinimumTLSVersion": "TLSv1.3"},
                "legacy.test": {"NSExceptionMinimumTLSVersion": "TLSv1.2"},
                "cdn.test": {"NSRequiresCertificateTransparency": True},
            },
            "NSPinnedDomains": {
                "api.test": {
                    # the CA matches the real chain, the leaf does not: ATS needs both, so this is a mismatch
                    "NSPinnedCAIdentities": [
                        {"SPKI-SHA256-BASE64": base64.b64encode(spki_digest(chain.intermediate.cert)).decode()}
                    ],
                    "NSPinnedLeafIdentities": [{"SPKI-SHA256-BASE64": WRONG_PIN}],
                }
            },
        },
    }


def test_ipa_import_and_every_ats_broken_promise(pki, http_upstream: Upstream, tmp_path: Path) -> None:
    chain, root_file, _, _ = pki
    ipa = build_ipa(tmp_path, ipa_info(chain))
    policy, warnings = import_app(ipa, tmp_path)
    assert "NSRequiresCertificateTransparency" in warnings and "does not check certificate transparency" in warnings
    text = policy.read_text()
    assert "leaf:" in text and "ca:" in text and "Payload/App.app/Info.plist" in text
    # api.test speaks at most TLS 1.2 (the app declares 1.3); legacy.test offers only a suite without forward secrecy
    tls12 = tls_upstream(tmp_path, chain.leaf, chain.intermediate, version="1.2", name="tls12")
    rsa_leaf = make_leaf(chain.intermediate, ("legacy.test",), key="rsa:2048")
    no_fs = tls_upstream(tmp_path, rsa_leaf, chain.intermediate, version="1.2", ciphers="AES128-GCM-SHA256", name="nofs")
    try:
        gate = start(tmp_path, policy, root_file, ("api.test", "a.api.test", "legacy.test", "www.test"))
        ca = str(gate.ca_cert)
        assert curl(gate.proxy_url, f"https://api.test:{tls12.port}/", "--cacert", ca).status == 200
        below = wait_kind(gate, "conformance", "below_declared_min_version")
        assert below["evidence"]["side"] == "server" and below["evidence"]["declared_min"] == "1.3"
        assert "NSExceptionMinimumTLSVersion" in below["evidence"]["declared_at"]
        mismatch = wait_kind(gate, "conformance", "pin_mismatch")
        assert 'NSPinnedDomains["api.test"]' in mismatch["evidence"]["declared_at"]
        assert wait_kind(gate, "pinning", "not_pinned")["host"] == "api.test"

        # the app's own TLS stack offering less than it declares (a component with an old TLS library)
        assert curl(gate.proxy_url, f"https://api.test:{tls12.port}/", "--cacert", ca, "--tls-max", "1.2").status == 200

        def client_side() -> list[dict]:
            found = by_kind(gate.findings(), "conformance", "below_declared_min_version")
            return [f for f in found if f["evidence"]["side"] == "client"]

        assert eventually(client_side)
        assert client_side()[0]["evidence"]["best_offered_version"] == "1.2" and client_side()[0]["action"] == "reported"

        assert curl(gate.proxy_url, f"https://legacy.test:{no_fs.port}/", "--cacert", ca).status == 200
        assert "forward" in wait_kind(gate, "conformance", "no_forward_secrecy")["detail"]

        # cleartext: forbidden for the exception domain (ATS defaults apply there), allowed elsewhere (arbitrary loads)
        assert curl(gate.proxy_url, f"http://a.api.test:{http_upstream.port}/").status == 200
        assert wait_kind(gate, "conformance", "cleartext_forbidden")["host"] == "a.api.test"
        assert curl(gate.proxy_url, f"http://www.test:{http_upstream.port}/").status == 200
        assert not [f for f in gate.findings() if f["check"] == "conformance" and f["host"] == "www.test"]
        gate.stop()
    finally:
        tls12.stop()
        no_fs.stop()


PINNING_POLICY = """version: 1
defaults:
  mode: enforce
rules:
  - hosts: [api.test]
    app:
      source: "res/xml/network_security_config.xml:4 <domain-config>"
      must_pin: true
"""


def test_pinning_assertion_tells_pinned_not_pinned_and_ca_not_installed_apart(
    tlsgate, pki, https_upstream: Upstream, tmp_path: Path
) -> None:
    chain = pki[0]
    port = https_upstream.port
    gate = tlsgate(PINNING_POLICY, resolve={"api.test": port, "www.test": port})
    ca = str(gate.ca_cert)
    pin = "sha256//" + spki_pin(chain.leaf.cert).removeprefix("sha256/")

    # device 127.0.0.1: tlsgate's CA installed (www.test works), and the app pins api.test
    assert curl(gate.proxy_url, f"https://www.test:{port}/", "--cacert", ca).status == 200
    pinned = curl(gate.proxy_url, f"https://api.test:{port}/", "--cacert", ca, "--pinnedpubkey", pin)
    assert pinned.returncode != 0 and "pinned" in pinned.stderr.lower()
    passed = wait_kind(gate, "pinning", "pinned")
    assert passed["action"] == "passed" and passed["evidence"]["ca_installed_because"]["accepted_for"] == ["www.test"]

    # the same device, an app that does not pin: 403, and the upstream never sees a request for api.test
    before = len(https_upstream.requests)
    refused = curl(gate.proxy_url, f"https://api.test:{port}/", "--cacert", ca)
    assert refused.status == 403 and len(https_upstream.requests) == before
    not_pinned = wait_kind(gate, "pinning", "not_pinned")
    assert not_pinned["action"] == "blocked" and "res/xml/network_security_config.xml:4" in not_pinned["evidence"]["declared_at"]

    # device 127.0.0.2: the CA is not installed, so it refuses tlsgate everywhere; that is not pinning
    assert curl(gate.proxy_url, f"https://www.test:{port}/", "--interface", "127.0.0.2").returncode != 0
    assert curl(gate.proxy_url, f"https://api.test:{port}/", "--interface", "127.0.0.2").returncode != 0
    missing = wait_kind(gate, "pinning", "ca_not_installed")
    assert missing["client"].startswith("127.0.0.2:") and missing["evidence"]["refused_for"] == ["www.test"]
    assert not [f for f in by_kind(gate.findings(), "pinning", "pinned") if f["client"].startswith("127.0.0.2:")]

    # device 127.0.0.3 first refuses api.test: nothing yet tells pinning from a missing CA ...
    pins = curl(gate.proxy_url, f"https://api.test:{port}/", "--cacert", ca, "--pinnedpubkey", pin, "--interface", "127.0.0.3")
    assert pins.returncode != 0
    first = wait_kind(gate, "pinning", "undetermined")
    assert first["client"].startswith("127.0.0.3:") and first["action"] == "reported"
    # ... until the same device takes tlsgate's certificate for another host: then that refusal was pinning
    assert curl(gate.proxy_url, f"https://www.test:{port}/", "--cacert", ca, "--interface", "127.0.0.3").status == 200
    assert eventually(lambda: [f for f in by_kind(gate.findings(), "pinning", "pinned") if f["client"].startswith("127.0.0.3:")])
    settled = [f for f in by_kind(gate.findings(), "pinning", "pinned") if f["client"].startswith("127.0.0.3:")]
    assert settled[0]["evidence"]["ca_installed_because"]["accepted_for"] == ["www.test"]
    assert len(by_kind(gate.findings(), "pinning", "undetermined")) == 1
    metrics = gate.scrape()
    assert 'tlsgate_app_conformance_total{action="passed",check="pinning",kind="pinned"} 2.0' in metrics
    assert 'tlsgate_app_conformance_total{action="reported",check="pinning",kind="ca_not_installed"} 1.0' in metrics
    # only the two www.test requests ever reached the upstream
    assert [r.headers["Host"].split(":")[0] for r in https_upstream.requests] == ["www.test", "www.test"]


def not_pinned_with(gate: Tlsgate, action: str) -> list[dict]:
    def found() -> list[dict]:
        return [f for f in by_kind(gate.findings(), "pinning", "not_pinned") if f["action"] == action]

    assert eventually(found, timeout=15), gate.output
    return found()


def test_raw_tls_streams_on_a_must_pin_host_are_cut_off_in_enforce_and_recorded_in_report(tlsgate, pki) -> None:
    _, _, cert_file, key_file = pki
    server = RawTlsServer(cert_file, key_file).start()
    try:
        for mode in ("enforce", "report"):
            policy = PINNING_POLICY.replace("mode: enforce", f"mode: {mode}")
            gate = tlsgate(policy, resolve={"api.test": server.port}, args=("--set", "tcp_hosts=api.test"))
            context = ssl.create_default_context(cafile=str(gate.ca_cert))
            with socket.create_connection(("127.0.0.1", gate.port), timeout=15) as raw:
                raw.sendall(f"CONNECT api.test:{server.port} HTTP/1.1\r\n\r\n".encode())
                assert raw.recv(4096).startswith(b"HTTP/1.1 200")
                with context.wrap_socket(raw, server_hostname="api.test") as stream:
                    stream.sendall(b"telemetry frame\n")
                    try:
                        answer = stream.recv(4096)
                    except (ssl.SSLError, OSError):
                        answer = b""
            # the two runs share one findings file: this run's is the one with its action
            action = "blocked" if mode == "enforce" else "reported"
            (finding,) = not_pinned_with(gate, action)
            assert "bytes (not HTTP)" in finding["detail"]
            if mode == "enforce":
                assert answer == b"" and server.received == [], "a must-pin host got bytes from an app that does not pin"
            else:
                assert answer == b"echo:telemetry frame\n"
            gate.stop()
    finally:
        server.stop()


MQTT_APP = """version: 1
defaults:
  mode: enforce
  cleartext: {default: block, mqtt: allow}
rules:
  - hosts: [broker.test]
    app:
      source: "res/xml/network_security_config.xml:7 <domain-config>"
      cleartext: forbid
"""


def test_a_cleartext_stream_to_a_host_the_app_forbids_it_for_is_its_own_finding(tlsgate) -> None:
    with RecordingServer("mqtt") as broker:
        gate = tlsgate(MQTT_APP, resolve={"broker.test": broker.port})  # tlsgate itself lets MQTT through here
        seen = mqtt_connect(f"broker.test:{broker.port}", "device-7", "hunter2", connect_proxy=f"127.0.0.1:{gate.port}")
        assert seen.extra["connack"] is True, seen.as_dict()
        finding = wait_kind(gate, "conformance", "cleartext_forbidden")
    assert finding["action"] == "reported" and finding["evidence"]["protocol"] == "mqtt"
    assert finding["evidence"]["declared_at"] == "res/xml/network_security_config.xml:7 <domain-config>"
    assert "hunter2" not in json.dumps(gate.findings()) and "device-7" not in json.dumps(gate.findings())
