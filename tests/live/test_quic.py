"""QUIC / HTTP/3 end to end: a real tlsgate in `--mode reverse:http3://`, real aioquic peers, loopback only.

reverse:http3 is the UDP-carrying mode that runs on loopback without a
network namespace; mitmproxy builds the same QUIC layers there as in
wireguard, local and tun mode (ServerQuicLayer > ClientQuicLayer), so the
hooks tlsgate judges QUIC in are the same. `api.test`/`www.test` are pointed at
the recording server with --resolve, so SNI, pins and the policy rule all use
the names the client asked for.

Every refusal is checked at the server: no request (`requests == []`), and
where tlsgate refuses before contacting it, not one datagram.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import quicpeers
from tests.certgen import make_chain, write_pem
from tests.harness import Tlsgate, eventually
from tests.live.test_metrics import value
from tlsgate.tls.pins import spki_pin

HANDSHAKE_FAILURE = 0x100 + 40  # QUIC CRYPTO_ERROR carrying TLS alert handshake_failure


@pytest.fixture
def upstream(pki) -> Iterator[quicpeers.RecordingServer]:
    _, _, cert_file, key_file = pki
    server = quicpeers.RecordingServer(cert_file, key_file).start()
    yield server
    server.stop()


@pytest.fixture
def quicgate(tmp_path: Path, pki, upstream: quicpeers.RecordingServer) -> Iterator[Callable[[str | None], Tlsgate]]:
    started: list[Tlsgate] = []
    _, root_file, _, _ = pki

    def start(policy: str | None, *, upstream_ca: Path | None = None) -> Tlsgate:
        port = upstream.port
        args = [
            "--upstream-ca",
            str(upstream_ca or root_file),
            "--mode",
            f"reverse:http3://api.test:{port}",
            "--resolve",
            f"api.test:{port}:127.0.0.1",
        ]
        if policy is not None:
            path = tmp_path / "policy.yaml"
            path.write_text(policy)
            args += ["--policy", str(path)]
        gate = Tlsgate(tmp_path, args).start()
        started.append(gate)
        return gate

    yield start
    for gate in started:
        gate.stop()


def get(gate: Tlsgate, *, host: str = "api.test", path: str = "/one", verify: bool = True) -> quicpeers.Response:
    return quicpeers.get(
        f"https://{host}{path}",
        server_name=host,
        port=gate.port,
        ca_file=gate.ca_cert if verify else None,
        verify=verify,
        timeout=8,
    )


def rule_policy(*lines: str, pins: list[str] | None = None) -> str:
    text = ["version: 1"]
    if pins:
        text += ["pin_sets:", "  backend:", "    pins:"] + [f"      - {p}" for p in pins]
    text += ["rules:", "  - hosts: [api.test, www.test]", *(f"    {line}" for line in lines)]
    if pins:
        text.append("    pins: backend")
    return "\n".join(text) + "\n"


# -- refuse (the default) -------------------------------------------------------------------------------------


def test_default_policy_refuses_quic_at_once_and_the_upstream_gets_nothing(quicgate, upstream) -> None:
    gate = quicgate(None)
    first, retry = get(gate), get(gate)
    for response in (first, retry):
        assert response.status is None and response.close_code == HANDSHAKE_FAILURE  # a CONNECTION_CLOSE, not a timeout
    (finding,) = gate.wait_findings(1)
    assert (finding["check"], finding["action"], finding["host"]) == ("quic", "blocked", "api.test")
    assert finding["rule"] == "policies/default.yaml:5" and "quic: inspect" in finding["remedy"]
    assert finding["evidence"]["transport"] == "quic" and finding["evidence"]["alpn_offered"] == ["h3"]
    metrics = gate.scrape()
    assert value(metrics, "tlsgate_quic_connections_total", decision="refused") == 2
    assert value(metrics, "tlsgate_findings_total", check="quic") == 1  # once per client and host, not per retry
    assert upstream.datagrams == 0 and upstream.requests == []  # not even an Initial packet
    assert len(gate.findings()) == 1


def test_the_reported_case_pins_min_version_and_probes_without_a_quic_setting_is_refused(quicgate, upstream) -> None:
    """The user's report: such a rule in enforce mode let QUIC through to the real server, unjudged and uncounted."""
    other = make_chain()
    pins = [spki_pin(other.leaf.cert), spki_pin(other.root.cert)]
    gate = quicgate(rule_policy("mode: enforce", "tls:", "  min_version: '1.3'", "client:", "  probes: [self_signed]", pins=pins))
    response = get(gate)
    assert response.status is None and response.close_code == HANDSHAKE_FAILURE
    (finding,) = gate.wait_findings(1)
    assert (finding["check"], finding["action"], finding["host"]) == ("quic", "blocked", "api.test")
    assert finding["rule"].endswith("policy.yaml:8") and "set 'quic: inspect' in the rule at" in finding["remedy"]
    metrics = gate.scrape()
    assert value(metrics, "tlsgate_requests_total", decision="allowed") == 0
    assert value(metrics, "tlsgate_quic_connections_total", decision="refused") == 1
    assert upstream.datagrams == 0 and upstream.requests == []


# -- inspect --------------------------------------------------------------------------------------------------


def test_inspected_quic_with_matching_pins_passes_without_findings(quicgate, upstream, pki) -> None:
    chain = pki[0]
    gate = quicgate(
        rule_policy("quic: inspect", "tls:", "  min_version: '1.3'", pins=[spki_pin(chain.leaf.cert), spki_pin(chain.root.cert)])
    )
    response = get(gate)
    assert (response.status, response.body) == (200, "quicpeers ok /one")
    assert upstream.paths == ["/one"]
    metrics = gate.scrape()
    assert value(metrics, "tlsgate_requests_total", decision="allowed", transport="quic") == 1
    assert value(metrics, "tlsgate_upstream_connections_total", decision="allowed", transport="quic") == 1
    assert value(metrics, "tlsgate_quic_connections_total", decision="inspected") == 1
    assert value(metrics, "tlsgate_pin_checks_total", result="match") == 1
    assert gate.findings() == []


def test_inspected_quic_with_mismatching_pins_is_blocked_before_any_stream_reaches_the_server(quicgate, upstream) -> None:
    other = make_chain()
    policy = rule_policy("quic: inspect", pins=[spki_pin(other.leaf.cert), spki_pin(other.root.cert)])
    rule = f"policy.yaml:{policy.splitlines().index('  - hosts: [api.test, www.test]') + 1}"
    gate = quicgate(policy)
    response = get(gate)
    assert response.status == 403 and response.headers["x-tlsgate-check"] == "pin"
    assert response.headers["x-tlsgate-rule"].endswith(rule)
    (finding,) = gate.wait_findings(1)
    assert (finding["check"], finding["action"], finding["host"], finding["evidence"]["kind"]) == (
        "pin",
        "blocked",
        "api.test",
        "pin_mismatch",
    )
    assert finding["rule"].endswith(rule) and "add one of the chain's pins" in finding["remedy"]
    assert finding["evidence"]["transport"] == "quic" and finding["evidence"]["negotiated_version"] == "TLSv1.3"
    assert upstream.requests == []
    # The server saw a handshake that tlsgate closed before its own Finished: no stream frame, never completed.
    assert eventually(lambda: len(upstream.connections) == 1 and upstream.connections[0].ended, timeout=10)
    (seen,) = upstream.connections
    assert (seen.handshake_completed, seen.stream_frames) == (False, 0)
    metrics = gate.scrape()
    assert value(metrics, "tlsgate_requests_total", decision="blocked", check="pin", transport="quic") == 1
    assert value(metrics, "tlsgate_upstream_connections_total", decision="blocked", check="pin", transport="quic") == 1


def test_an_untrusted_quic_upstream_is_refused_by_mitmproxys_own_validation(quicgate, upstream, tmp_path: Path) -> None:
    other_root = write_pem(tmp_path / "other-root.pem", make_chain().root)  # tlsgate trusts another CA than the server's
    gate = quicgate(rule_policy("quic: inspect"), upstream_ca=other_root)
    response = get(gate)
    assert response.status == 403 and response.headers["x-tlsgate-check"] == "certificate"
    (finding,) = gate.wait_findings(1)
    assert (finding["check"], finding["action"]) == ("certificate", "blocked")
    assert (finding["evidence"]["kind"], finding["evidence"]["transport"]) == ("unknown_issuer", "quic")
    assert upstream.requests == [] and all(c.stream_frames == 0 for c in upstream.connections)


def test_report_mode_forwards_quic_and_records_the_refusal_and_the_pin_mismatch(quicgate, upstream) -> None:
    other = make_chain()
    gate = quicgate(rule_policy("mode: report", "quic: refuse", pins=[spki_pin(other.leaf.cert), spki_pin(other.root.cert)]))
    response = get(gate)
    assert (response.status, response.body) == (200, "quicpeers ok /one")
    assert upstream.paths == ["/one"]
    findings = gate.wait_findings(2)
    assert sorted((f["check"], f["action"]) for f in findings) == [("pin", "reported"), ("quic", "reported")]
    assert all(f["evidence"]["transport"] == "quic" for f in findings)
    assert value(gate.scrape(), "tlsgate_quic_connections_total", decision="reported") == 1


# -- client probes --------------------------------------------------------------------------------------------


def test_probes_over_quic_catch_an_accepting_client_and_credit_a_verifying_one(quicgate, upstream) -> None:
    gate = quicgate(rule_policy("quic: inspect", "client:", "  probes: [self_signed]"))
    accepting = get(gate, host="api.test", verify=False)
    assert accepting.status == 403 and accepting.headers["x-tlsgate-check"] == "client_probe"
    verifying = get(gate, host="www.test", verify=True)
    assert verifying.status is None and "self-signed" in (verifying.close_reason or "")
    findings = {f["host"]: f for f in gate.wait_findings(2)}
    caught, credited = findings["api.test"], findings["www.test"]
    assert (caught["check"], caught["action"], caught["severity"]) == ("client_probe", "blocked", "critical")
    assert caught["evidence"]["sent"]["method"] == "GET" and caught["evidence"]["ja4"].startswith("q13")
    assert (credited["check"], credited["action"], credited["evidence"]["rejection"]) == (
        "client_probe",
        "passed",
        "bad certificate",
    )
    assert all(f["evidence"]["transport"] == "quic" for f in findings.values())
    assert upstream.requests == [] and upstream.datagrams == 0  # a probe never involves the server


# -- the peers themselves -------------------------------------------------------------------------------------


def test_quicpeers_command_line_serves_records_and_gets(pki, tmp_path: Path) -> None:
    _, root_file, cert_file, key_file = pki
    record = tmp_path / "record.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "tests.quicpeers",
        "serve",
        "--cert",
        str(cert_file),
        "--key",
        str(key_file),
        "--record",
        str(record),
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
        client = [sys.executable, "-m", "tests.quicpeers", "get", "https://api.test/cli", "--connect", f"127.0.0.1:{port}"]
        ok = subprocess.run(
            [*client, "--server-name", "api.test", "--ca", str(root_file)], capture_output=True, text=True, timeout=30
        )
        assert ok.returncode == 0 and '"status": 200' in ok.stdout
        refused = subprocess.run([*client, "--server-name", "api.test"], capture_output=True, text=True, timeout=30)  # system CAs
        assert refused.returncode == 1 and '"status": null' in refused.stdout
        assert eventually(lambda: record.exists() and '"path": "/cli"' in record.read_text(), timeout=10)
    finally:
        server.terminate()
        server.wait(10)


def test_an_app_that_does_not_trust_tlsgates_ca_over_quic_is_explained(quicgate, upstream) -> None:
    gate = quicgate(rule_policy("quic: inspect"))
    response = quicpeers.get("https://api.test/", server_name="api.test", port=gate.port, timeout=8)  # system CAs only
    assert response.status is None and response.close_code == 0x100 + 42  # CRYPTO_ERROR: bad_certificate
    (finding,) = gate.wait_findings(1)
    assert (finding["check"], finding["action"], finding["evidence"]["kind"]) == (
        "client_trust",
        "reported",
        "certificate_refused",
    )
    assert finding["evidence"]["transport"] == "quic" and finding["evidence"]["rejection"] == "bad certificate"
    assert upstream.requests == []
