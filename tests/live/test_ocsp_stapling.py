"""OCSP stapling end to end: real stapling servers, a test CA that signs their OCSP responses, curl through tlsgate.

Servers are `tests.ocsplab.StaplingServer` (pyOpenSSL: staples what it is
given and records every application byte it receives) and OpenSSL's own
`openssl s_server -status_file`. Each blocked case asserts that the server
was asked for its staple and not one byte of the request reached it; tlsgate
judges the staple inside the handshake (OpenSSL's status callback), so a
refused server's handshake never completes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from OpenSSL import SSL

from tests import quicpeers
from tests.certgen import Chain, make_leaf, utcnow
from tests.harness import Tlsgate, curl, eventually
from tests.ocsplab import StaplingServer, make_responder, ocsp_response, s_server, tampered

HOST = "api.test"


@pytest.fixture
def chain(pki) -> Chain:
    return pki[0]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[StaplingServer]]:
    started: list[StaplingServer] = []
    yield started
    for server in started:
        server.stop()


def stapling(servers: list[StaplingServer], tmp_path: Path, chain: Chain, staple: bytes, **kwargs) -> StaplingServer:
    directory = tmp_path / f"server{len(servers)}"
    directory.mkdir()
    leaf = kwargs.pop("leaf", chain.leaf)
    server = StaplingServer(directory, leaf, (chain.intermediate,), staple, **kwargs).start()
    servers.append(server)
    return server


def get(gate, host: str, port: int, path: str = "/"):
    return curl(gate.proxy_url, f"https://{host}:{port}{path}", "--cacert", str(gate.ca_cert), "-H", "Accept: application/json")


def policy(revocation: str, mode: str = "enforce") -> str:
    return f"version: 1\ndefaults:\n  mode: {mode}\n  revocation: {revocation}\n"


def revocation_findings(gate, count: int = 1) -> list[dict]:
    assert eventually(lambda: len([f for f in gate.findings() if f["check"] == "revocation"]) >= count), gate.findings()
    return [f for f in gate.findings() if f["check"] == "revocation"]


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_good_staple_passes_and_nothing_is_recorded(tlsgate, servers, tmp_path: Path, chain: Chain) -> None:
    server = stapling(servers, tmp_path, chain, ocsp_response(chain.leaf, chain.intermediate))
    gate = tlsgate(policy("require"), resolve={HOST: server.port})
    result = get(gate, HOST, server.port, "/hello")
    assert result.status == 200 and "stapling server" in result.body, result
    assert server.status_requests == 1 and len(server.requests) == 1
    assert server.requests[0].startswith(b"GET /hello ")
    assert gate.findings() == []


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION], ids=["tls1.2", "tls1.3"])
def test_a_revoked_staple_is_blocked_before_any_request_byte(
    tlsgate, servers, tmp_path: Path, chain: Chain, version: int
) -> None:
    when = utcnow().replace(hour=0, minute=0, second=0)
    revoked = ocsp_response(
        chain.leaf, chain.intermediate, status="revoked", revoked_at=when, reason=x509.ReasonFlags.key_compromise
    )
    server = stapling(servers, tmp_path, chain, revoked, tls_version=version)
    gate = tlsgate(policy("{stapling: report}"), resolve={HOST: server.port})
    result = get(gate, HOST, server.port, "/secret")
    assert result.status == 403, result
    body = json.loads(result.body)
    assert body["check"] == "revocation" and body["host"] == HOST and body["rule"] == "policy.yaml:2"
    assert "revoked" in body["reason"] and "key_compromise" in body["reason"]
    # asked for its staple, refused inside the handshake: it never completed one, so no request byte could follow
    assert eventually(lambda: len(server.errors) >= 1) and server.status_requests == 1 and server.handshakes == 0
    assert server.requests == [], "the revoked server saw request bytes"
    (finding,) = revocation_findings(gate)
    assert (finding["action"], finding["severity"], finding["evidence"]["kind"]) == ("blocked", "critical", "revoked")
    evidence = finding["evidence"]
    assert evidence["revoked_at"].startswith(when.date().isoformat()) and evidence["revocation_reason"] == "key_compromise"
    assert evidence["responder"] == "issuer" and evidence["revocation_rule"] == "policy.yaml:4"
    assert evidence["negotiated_version"] == {SSL.TLS1_2_VERSION: "TLSv1.2", SSL.TLS1_3_VERSION: "TLSv1.3"}[version]
    assert "revocation.revoked: report at policy.yaml:4" in finding["remedy"]
    assert "set 'mode: report'" in finding["remedy"] or "mode: report" in finding["remedy"]
    text = gate.scrape()
    assert metric(text, "tlsgate_upstream_connections_total", decision="blocked", check="revocation") == 1
    assert metric(text, "tlsgate_findings_total", check="revocation", action="blocked", severity="critical") == 1


def test_require_without_a_staple_blocks_in_enforce_and_forwards_in_report(
    tlsgate, servers, tmp_path: Path, chain: Chain
) -> None:
    server = stapling(servers, tmp_path, chain, b"")
    gate = tlsgate(policy("require"), resolve={HOST: server.port})
    assert get(gate, HOST, server.port).status == 403
    assert server.status_requests == 1 and server.requests == []
    (finding,) = revocation_findings(gate)
    assert (finding["action"], finding["evidence"]["kind"], finding["rule"]) == ("blocked", "staple_missing", "policy.yaml:2")
    assert "enable OCSP stapling" in finding["remedy"] and "revocation.stapling: report at policy.yaml:4" in finding["remedy"]
    assert metric(gate.scrape(), "tlsgate_upstream_connections_total", decision="blocked", check="revocation") == 1
    gate.stop()
    gate.findings_path.unlink()

    reporting = tlsgate(policy("require", mode="report"), resolve={HOST: server.port})
    result = get(reporting, HOST, server.port, "/forwarded")
    assert result.status == 200, result
    assert [r.split(b" ")[1] for r in server.requests] == [b"/forwarded"]
    (finding,) = revocation_findings(reporting)
    assert (finding["action"], finding["evidence"]["kind"]) == ("reported", "staple_missing")
    assert metric(reporting.scrape(), "tlsgate_upstream_connections_total", decision="reported", check="revocation") == 1


def test_staples_that_prove_nothing_are_refused_under_require(tlsgate, servers, tmp_path: Path, chain: Chain) -> None:
    """One tlsgate, one server per case, each under its own host name (all in the test leaf's SAN).

    A response about another certificate is served by s_server below: OpenSSL 4 (pyOpenSSL's) will not staple one.
    """
    now = utcnow()
    stranger_ca = make_responder(chain.root)  # issued by the root, not by the leaf's issuer
    no_purpose = make_responder(chain.intermediate, ocsp_signing=False)
    cases = {
        "www.test": (ocsp_response(chain.leaf, chain.intermediate, status="unknown"), "staple_unknown", "unknown"),
        "legacy.test": (
            ocsp_response(
                chain.leaf, chain.intermediate, this_update=now - dt.timedelta(days=9), next_update=now - dt.timedelta(days=2)
            ),
            "staple_invalid",
            "expired",
        ),
        "cdn.test": (
            ocsp_response(chain.leaf, chain.intermediate, status="revoked", signer=no_purpose, carry=[no_purpose.cert]),
            "staple_invalid",
            "bad_signature",
        ),
        HOST: (
            ocsp_response(chain.leaf, chain.intermediate, status="revoked", signer=stranger_ca, carry=[stranger_ca.cert]),
            "staple_invalid",
            "bad_signature",
        ),
        "a.cdn.test": (
            tampered(ocsp_response(chain.leaf, chain.intermediate, status="revoked")),
            "staple_invalid",
            "bad_signature",
        ),
    }
    ports = {host: stapling(servers, tmp_path, chain, staple).port for host, (staple, _, _) in cases.items()}
    gate = tlsgate(policy("require"), resolve=ports)
    for host in cases:
        assert get(gate, host, ports[host]).status == 403, host
    assert all(server.requests == [] for server in servers)
    findings = {f["host"]: f for f in revocation_findings(gate, len(cases))}
    for host, (_, kind, outcome) in cases.items():
        finding = findings[host]
        assert (finding["action"], finding["evidence"]["kind"], finding["evidence"]["staple"]) == ("blocked", kind, outcome)
    assert "OCSP signing purpose" in findings["cdn.test"]["detail"]


@pytest.mark.parametrize(("version", "copies"), [(SSL.TLS1_2_VERSION, 40), (SSL.TLS1_3_VERSION, 40)], ids=["tls1.2", "tls1.3"])
def test_an_oversized_staple_never_lets_a_request_through(
    tlsgate, servers, tmp_path: Path, chain: Chain, version: int, copies: int
) -> None:
    """A valid response padded with copies of a certificate (about 20 KiB): OpenSSL takes at most 16 KiB of
    CertificateStatus in TLS 1.2 and fails the handshake; TLS 1.3 carries it, and tlsgate judges it."""
    padding = make_responder(chain.intermediate).cert
    big = ocsp_response(chain.leaf, chain.intermediate, status="revoked", carry=[padding] * copies)
    assert len(big) > 16 * 1024
    server = stapling(servers, tmp_path, chain, big, tls_version=version)
    gate = tlsgate(policy("report"), resolve={HOST: server.port})
    assert get(gate, HOST, server.port).status == 403
    assert server.requests == []
    (finding,) = [f for f in gate.wait_findings(1) if f["action"] == "blocked"]
    if version == SSL.TLS1_2_VERSION:
        assert finding["check"] == "tls" and "excessive message size" in finding["detail"], finding
    else:
        assert (finding["check"], finding["evidence"]["kind"], finding["evidence"]["staple_bytes"]) == (
            "revocation",
            "revoked",
            len(big),
        )


def test_a_delegated_responder_and_revoked_report_pass(tlsgate, servers, tmp_path: Path, chain: Chain) -> None:
    responder = make_responder(chain.intermediate)
    good = stapling(
        servers, tmp_path, chain, ocsp_response(chain.leaf, chain.intermediate, signer=responder, carry=[responder.cert])
    )
    revoked = stapling(servers, tmp_path, chain, ocsp_response(chain.leaf, chain.intermediate, status="revoked"))
    text = (
        "version: 1\ndefaults:\n  revocation: require\nrules:\n"
        "  - hosts: www.test\n    revocation: {stapling: require, revoked: report}\n"
    )
    gate = tlsgate(text, resolve={HOST: good.port, "www.test": revoked.port})
    assert get(gate, HOST, good.port).status == 200
    assert get(gate, "www.test", revoked.port, "/still").status == 200
    assert len(revoked.requests) == 1
    (finding,) = revocation_findings(gate)
    assert (finding["host"], finding["action"], finding["evidence"]["kind"]) == ("www.test", "reported", "revoked")
    assert finding["rule"] == "policy.yaml:5"


def test_without_the_section_the_handshake_asks_for_nothing(tlsgate, servers, tmp_path: Path, chain: Chain) -> None:
    revoked = stapling(servers, tmp_path, chain, ocsp_response(chain.leaf, chain.intermediate, status="revoked"))
    gate = tlsgate(resolve={HOST: revoked.port})
    assert get(gate, HOST, revoked.port).status == 200
    assert revoked.status_requests == 0 and revoked.handshakes == 1
    assert gate.findings() == []


def test_a_host_that_does_not_ask_is_untouched_after_one_that_did(tlsgate, servers, tmp_path: Path, chain: Chain) -> None:
    """mitmproxy shares one upstream context among hosts: the status callback tlsgate put on it for api.test
    must leave www.test's handshakes (whose rule turns stapling off) exactly as mitmproxy makes them."""
    good = stapling(servers, tmp_path, chain, ocsp_response(chain.leaf, chain.intermediate))
    revoked = stapling(servers, tmp_path, chain, ocsp_response(chain.leaf, chain.intermediate, status="revoked"))
    text = "version: 1\ndefaults:\n  revocation: require\nrules:\n  - hosts: www.test\n    revocation: 'off'\n"
    gate = tlsgate(text, resolve={HOST: good.port, "www.test": revoked.port})
    for _ in range(2):
        assert get(gate, HOST, good.port).status == 200
        assert get(gate, "www.test", revoked.port, "/untouched").status == 200
    assert (good.status_requests, good.handshakes) == (2, 2)
    assert (revoked.status_requests, revoked.handshakes, len(revoked.requests)) == (0, 2, 2)
    assert gate.findings() == []


def test_a_must_staple_leaf_without_a_staple_is_recorded_high_under_report(
    tlsgate, servers, tmp_path: Path, chain: Chain
) -> None:
    leaf = make_leaf(chain.intermediate, ("api.test",), must_staple=True)
    server = stapling(servers, tmp_path, chain, b"", leaf=leaf)
    gate = tlsgate(policy("report"), resolve={HOST: server.port})
    assert get(gate, HOST, server.port).status == 200
    (finding,) = revocation_findings(gate)
    assert (finding["action"], finding["severity"], finding["evidence"]["must_staple"]) == ("reported", "high", True)
    assert "Must-Staple" in finding["detail"]


# -- openssl s_server -status_file --------------------------------------------------------------------


def test_openssl_s_server_good_revoked_foreign_and_no_stapling(tlsgate, tmp_path: Path, chain: Chain) -> None:
    good = ocsp_response(chain.leaf, chain.intermediate)
    revoked = ocsp_response(chain.leaf, chain.intermediate, status="revoked", reason=x509.ReasonFlags.superseded)
    foreign = ocsp_response(make_leaf(chain.intermediate, ("api.test",)), chain.intermediate)  # same CA, another leaf
    for name in ("good", "revoked", "foreign", "none"):
        (tmp_path / name).mkdir()
    with (
        s_server(tmp_path / "good", chain.leaf, [chain.intermediate], good) as (good_port, _),
        s_server(tmp_path / "revoked", chain.leaf, [chain.intermediate], revoked, www=False) as (revoked_port, revoked_log),
        s_server(tmp_path / "foreign", chain.leaf, [chain.intermediate], foreign) as (foreign_port, _),
        s_server(tmp_path / "none", chain.leaf, [chain.intermediate], None) as (none_port, _),
    ):
        ports = {HOST: good_port, "www.test": revoked_port, "legacy.test": foreign_port, "cdn.test": none_port}
        gate = tlsgate(policy("require"), resolve=ports)
        passed = get(gate, HOST, good_port, "/")
        assert passed.status == 200 and "s_server" in passed.body, passed
        assert get(gate, "www.test", revoked_port, "/never-sent").status == 403
        assert get(gate, "legacy.test", foreign_port).status == 403
        assert get(gate, "cdn.test", none_port).status == 403
        kinds = {f["host"]: (f["action"], f["evidence"]["kind"], f["evidence"]["staple"]) for f in revocation_findings(gate, 3)}
        assert kinds == {
            "www.test": ("blocked", "revoked", "revoked"),
            "legacy.test": ("blocked", "staple_invalid", "wrong_certificate"),
            "cdn.test": ("blocked", "staple_missing", "absent"),
        }
        # s_server's echo mode prints what it receives: the handshake was aborted (refused inside it), no request came
        assert eventually(lambda: "ERROR" in revoked_log, 5), revoked_log
        assert not any("CIPHER is" in line or "Cipher is" in line for line in revoked_log), revoked_log
        assert not any("never-sent" in line or "GET" in line for line in revoked_log), revoked_log


# -- QUIC: aioquic cannot ask for a staple --------------------------------------------------------------


def test_a_quic_upstream_under_require_is_refused_not_passed_unchecked(tmp_path: Path, pki) -> None:
    _, root_file, cert_file, key_file = pki
    upstream = quicpeers.RecordingServer(cert_file, key_file).start()
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\ndefaults:\n  quic: inspect\n  revocation: require\n")
    args = ["--upstream-ca", str(root_file), "--mode", f"reverse:http3://{HOST}:{upstream.port}", "--policy", str(path)]
    gate = Tlsgate(tmp_path, [*args, "--resolve", f"{HOST}:{upstream.port}:127.0.0.1"]).start()
    try:
        response = quicpeers.get(
            f"https://{HOST}/one", server_name=HOST, port=gate.port, ca_file=gate.ca_cert, verify=True, timeout=8
        )
        assert response.status == 403 and response.headers["x-tlsgate-check"] == "revocation"
        assert upstream.requests == []
        (finding,) = revocation_findings(gate)
        assert (finding["action"], finding["evidence"]["kind"], finding["evidence"]["transport"]) == (
            "blocked",
            "staple_not_requested",
            "quic",
        )
        assert "quic: refuse" in finding["remedy"]
    finally:
        gate.stop()
        upstream.stop()
