"""Upstream TLS checks end to end: pins, certificate rules, protocol and suite rules.

Every case runs a real TLS server on loopback with certificates made here, a
real client (curl) through a real tlsgate, and asserts both the verdict and,
for blocks, that no request reached the server.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tests.certgen import make_chain, make_intermediate, make_leaf, utcnow
from tests.harness import Upstream, curl
from tests.tlsservers import TlsliteServer, tls_upstream
from tlsgate.tls.pins import spki_pin

HOST = "api.test"


def get(gate, port: int, path: str = "/", *extra: str):
    return curl(gate.proxy_url, f"https://{HOST}:{port}{path}", "--cacert", str(gate.ca_cert), *extra)


def pin_policy(pins: list[str], *, mode: str = "enforce", expires: str | None = None) -> str:
    lines = ["version: 1", "pin_sets:", "  backend:", "    pins:"] + [f"      - {p}" for p in pins]
    if expires:
        lines.append(f"    expires: {expires}")
    lines += ["rules:", f"  - hosts: {HOST}", f"    mode: {mode}", "    pins: backend", ""]
    return "\n".join(lines)


@pytest.fixture
def chain(pki):
    return pki[0]


# -- pins ---------------------------------------------------------------------------------------------


def test_pin_on_leaf_passes(tlsgate, https_upstream: Upstream, chain) -> None:
    gate = tlsgate(pin_policy([spki_pin(chain.leaf.cert), spki_pin(make_chain().leaf.cert)]), resolve={HOST: https_upstream.port})
    assert get(gate, https_upstream.port).status == 200
    assert gate.findings() == []


def test_backup_pin_on_intermediate_passes(tlsgate, https_upstream: Upstream, chain) -> None:
    spare = spki_pin(make_chain().leaf.cert)
    gate = tlsgate(pin_policy([spare, spki_pin(chain.intermediate.cert)]), resolve={HOST: https_upstream.port})
    assert get(gate, https_upstream.port).status == 200


def test_pin_on_root_passes_because_the_validated_chain_is_checked(tlsgate, https_upstream: Upstream, chain) -> None:
    gate = tlsgate(pin_policy([spki_pin(chain.root.cert), spki_pin(make_chain().leaf.cert)]), resolve={HOST: https_upstream.port})
    assert get(gate, https_upstream.port).status == 200


def test_pin_mismatch_blocks_before_any_request_byte(tlsgate, https_upstream: Upstream, chain, tmp_path: Path) -> None:
    wrong = [spki_pin(make_chain().leaf.cert), spki_pin(make_chain().leaf.cert)]
    gate = tlsgate(pin_policy(wrong), resolve={HOST: https_upstream.port})
    result = get(gate, https_upstream.port, "/secret", "-H", "Accept: application/json")
    assert result.status == 403
    assert https_upstream.requests == [], "the pinned-out server must not see the request"
    import json

    body = json.loads(result.body)
    assert body["check"] == "pin" and body["host"] == HOST and body["rule"] == "policy.yaml:8"
    assert body["evidence"]["expected"] == wrong
    assert {c["pin"] for c in body["evidence"]["chain"]} >= {spki_pin(chain.leaf.cert), spki_pin(chain.intermediate.cert)}
    (finding,) = [f for f in gate.wait_findings(1) if f["check"] == "pin"]
    assert finding["action"] == "blocked" and finding["severity"] == "critical"
    assert "pin set 'backend'" in finding["detail"] and "policy.yaml:3" in finding["remedy"]


def test_pin_mismatch_in_report_mode_forwards_and_records(tlsgate, https_upstream: Upstream) -> None:
    wrong = [spki_pin(make_chain().leaf.cert), spki_pin(make_chain().leaf.cert)]
    gate = tlsgate(pin_policy(wrong, mode="report"), resolve={HOST: https_upstream.port})
    assert get(gate, https_upstream.port).status == 200
    assert len(https_upstream.requests) == 1
    (finding,) = gate.wait_findings(1)
    assert finding["check"] == "pin" and finding["action"] == "reported" and finding["evidence"]["kind"] == "pin_mismatch"


def test_expired_pin_set_is_not_enforced_but_recorded(tlsgate, https_upstream: Upstream) -> None:
    wrong = [spki_pin(make_chain().leaf.cert), spki_pin(make_chain().leaf.cert)]
    gate = tlsgate(pin_policy(wrong, expires="2020-01-01"), resolve={HOST: https_upstream.port})
    assert get(gate, https_upstream.port).status == 200
    (finding,) = gate.wait_findings(1)
    assert finding["evidence"]["kind"] == "pin_set_expired" and finding["action"] == "reported"
    assert "2020-01-01" in finding["detail"]


# -- certificates -------------------------------------------------------------------------------------


def cert_case(name: str, chain):
    now = utcnow()
    if name == "expired":
        return make_leaf(
            chain.intermediate, (HOST,), not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
        ), [chain.intermediate]
    if name == "not_yet_valid":
        return make_leaf(
            chain.intermediate, (HOST,), not_before=now + dt.timedelta(days=2), not_after=now + dt.timedelta(days=60)
        ), [chain.intermediate]
    if name == "hostname_mismatch":
        return make_leaf(chain.intermediate, ("other.test",)), [chain.intermediate]
    if name == "self_signed":
        return make_leaf(None, (HOST,)), []
    if name == "unknown_issuer":
        stranger = make_chain(dns=(HOST,))
        return stranger.leaf, [stranger.intermediate]
    if name == "incomplete_chain":
        return make_leaf(chain.intermediate, (HOST,), ca_issuers_url="http://ca.test/intermediate.crt"), []
    raise AssertionError(name)


@pytest.mark.parametrize(
    "case", ["expired", "not_yet_valid", "hostname_mismatch", "self_signed", "unknown_issuer", "incomplete_chain"]
)
def test_certificate_failures_get_plain_names(tlsgate, chain, tmp_path: Path, case: str) -> None:
    leaf, served = cert_case(case, chain)
    server = tls_upstream(tmp_path, leaf, *served)
    try:
        gate = tlsgate(resolve={HOST: server.port})
        result = get(gate, server.port, "/", "-H", "Accept: application/json")
        assert result.status == 403, result
        assert server.requests == []
        (finding,) = gate.wait_findings(1)
        assert finding["check"] == "certificate" and finding["action"] == "blocked"
        assert finding["evidence"]["kind"] == case, finding
        assert finding["evidence"]["failure"] == case
    finally:
        server.stop()


def test_certificate_failures_block_even_in_report_mode(tlsgate, chain, tmp_path: Path) -> None:
    leaf, served = cert_case("self_signed", chain)
    server = tls_upstream(tmp_path, leaf, *served)
    try:
        gate = tlsgate("defaults:\n  mode: report\n", resolve={HOST: server.port})
        assert get(gate, server.port).status == 403
        assert server.requests == []
    finally:
        server.stop()


def test_weak_rsa_key_blocks_in_enforce_and_is_reported_in_report_mode(tlsgate, chain, tmp_path: Path) -> None:
    leaf = make_leaf(chain.intermediate, (HOST,), key="rsa:1024")
    server = tls_upstream(tmp_path, leaf, chain.intermediate)
    try:
        gate = tlsgate(resolve={HOST: server.port})
        assert get(gate, server.port).status == 403
        (finding,) = gate.wait_findings(1)
        # One server, one kind in both modes (OpenSSL's refusal is named like tlsgate's own rule).
        assert finding["check"] == "certificate" and finding["evidence"]["kind"] == "weak_rsa_key"
        gate.stop()
        gate.findings_path.unlink()
        reporting = tlsgate(f"rules:\n  - hosts: {HOST}\n    mode: report\n", resolve={HOST: server.port})
        assert get(reporting, server.port).status == 200
        kinds = {f["evidence"]["kind"]: f["action"] for f in reporting.wait_findings(1) if f["check"] == "certificate"}
        assert kinds == {"weak_rsa_key": "reported"}
    finally:
        server.stop()


def test_sha1_signed_intermediate_is_refused(tlsgate, chain, tmp_path: Path) -> None:
    intermediate = make_intermediate(chain.root, digest="sha1")
    leaf = make_leaf(intermediate, (HOST,))
    server = tls_upstream(tmp_path, leaf, intermediate)
    try:
        gate = tlsgate(resolve={HOST: server.port})
        assert get(gate, server.port).status == 403
        (finding,) = gate.wait_findings(1)
        assert finding["evidence"]["kind"] == "sha1_signature"
        assert server.requests == []
    finally:
        server.stop()


def test_expiring_soon_passes_with_days_left(tlsgate, chain, tmp_path: Path) -> None:
    leaf = make_leaf(chain.intermediate, (HOST,), not_after=utcnow() + dt.timedelta(days=5, hours=1))
    server = tls_upstream(tmp_path, leaf, chain.intermediate)
    try:
        gate = tlsgate(resolve={HOST: server.port})
        assert get(gate, server.port).status == 200
        (finding,) = gate.wait_findings(1)
        assert finding["evidence"]["kind"] == "expiring_soon" and finding["action"] == "reported"
        assert "5 days" in finding["detail"]
    finally:
        server.stop()


# -- protocol and suites -------------------------------------------------------------------------------


def test_tls10_server_is_refused_in_words_and_watched_in_report_mode(tlsgate, chain, tmp_path: Path) -> None:
    server = tls_upstream(tmp_path, chain.leaf, chain.intermediate, version="1.0")
    try:
        gate = tlsgate(resolve={HOST: server.port})
        assert get(gate, server.port).status == 403
        (finding,) = gate.wait_findings(1)
        assert finding["check"] == "protocol" and finding["evidence"]["kind"] == "no_common_protocol"
        assert "obsolete version" in finding["detail"]
        assert server.requests == []
        gate.stop()
        gate.findings_path.unlink()

        legacy = tlsgate(f"rules:\n  - hosts: {HOST}\n    mode: report\n", resolve={HOST: server.port})
        assert get(legacy, server.port).status == 200, "report mode must keep a legacy backend reachable"
        assert len(server.requests) == 1
        findings = legacy.wait_findings(1)
        protocol = [f for f in findings if f["check"] == "protocol"]
        assert protocol and protocol[0]["action"] == "reported" and protocol[0]["evidence"]["negotiated_version"] == "TLSv1"
    finally:
        server.stop()


def test_tls11_allowed_explicitly_in_enforce_mode(tlsgate, chain, tmp_path: Path) -> None:
    server = tls_upstream(tmp_path, chain.leaf, chain.intermediate, version="1.1")
    try:
        gate = tlsgate(f"rules:\n  - hosts: {HOST}\n    tls:\n      min_version: 1.1\n", resolve={HOST: server.port})
        assert get(gate, server.port).status == 200
        assert not [f for f in gate.findings() if f["check"] == "protocol"]
    finally:
        server.stop()


def test_min_version_13_refuses_a_tls12_server(tlsgate, chain, tmp_path: Path) -> None:
    server = tls_upstream(tmp_path, chain.leaf, chain.intermediate, version="1.2")
    try:
        gate = tlsgate(f"rules:\n  - hosts: {HOST}\n    tls:\n      min_version: '1.3'\n", resolve={HOST: server.port})
        assert get(gate, server.port).status == 403
        (finding,) = gate.wait_findings(1)
        assert finding["evidence"]["kind"] == "version_too_low" and "TLS 1.2" in finding["detail"]
        assert server.requests == []
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("ciphers", "preset", "key", "reasons"),
    [
        ("ECDHE-ECDSA-AES128-SHA", "intermediate", "ec:P-256", ("CBC mode", "SHA-1 MAC")),
        ("AES128-GCM-SHA256", "ats", "rsa:2048", ("no forward secrecy",)),
    ],
)
def test_weak_suite_is_named_with_why(tlsgate, chain, tmp_path: Path, ciphers: str, preset: str, key: str, reasons) -> None:
    leaf = make_leaf(chain.intermediate, (HOST,), key=key)
    server = tls_upstream(tmp_path, leaf, chain.intermediate, version="1.2", ciphers=ciphers)
    try:
        gate = tlsgate(f"rules:\n  - hosts: {HOST}\n    tls:\n      ciphers: {preset}\n", resolve={HOST: server.port})
        assert get(gate, server.port).status == 403
        assert server.requests == []
        (finding,) = gate.wait_findings(1)
        assert finding["check"] == "cipher" and finding["evidence"]["kind"] == "weak_suite"
        assert finding["evidence"]["openssl_name"] == ciphers
        for reason in reasons:
            assert reason.lower() in finding["detail"].lower(), finding["detail"]
        gate.stop()
        relaxed = tlsgate(
            f"rules:\n  - hosts: {HOST}\n    tls:\n      ciphers:\n        preset: {preset}\n        allow: [{ciphers}]\n",
            resolve={HOST: server.port},
        )
        assert get(relaxed, server.port).status == 200
    finally:
        server.stop()


@pytest.mark.parametrize("cipher", ["3des", "rc4", "null"])
def test_suites_openssl_no_longer_has_are_explained(tlsgate, chain, tmp_path: Path, cipher: str) -> None:
    leaf = make_leaf(chain.intermediate, (HOST,), key="rsa:2048")
    server = TlsliteServer(leaf, (chain.intermediate,), [cipher]).start()
    try:
        gate = tlsgate(f"rules:\n  - hosts: {HOST}\n    mode: report\n", resolve={HOST: server.port})
        assert get(gate, server.port).status == 403
        assert server.handshakes >= 1 and server.requests == []
        (finding,) = gate.wait_findings(1)
        assert finding["check"] == "cipher" and finding["evidence"]["kind"] == "no_common_suite"
        assert "RC4, 3DES" in finding["detail"]
        assert "alert" not in finding["detail"]  # words, not an OpenSSL error tuple
    finally:
        server.stop()
