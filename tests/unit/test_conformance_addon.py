"""The conformance add-on inside mitmproxy's test harness: real options, real flows, findings read back from the file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import connection, tls
from mitmproxy.addons.tlsconfig import TlsConfig
from mitmproxy.proxy.context import Context
from mitmproxy.test import taddons, tflow, tutils

from tests.certgen import make_chain
from tlsgate.addons import make_addons
from tlsgate.addons.conformance import Conformance
from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.metrics import MetricsExporter
from tlsgate.addons.policy import PolicyStore
from tlsgate.addons.state import Connections, ServerSide
from tlsgate.addons.upstream_tls import UpstreamTls
from tlsgate.checks.registry import Phase
from tlsgate.checks.upstream import HandshakeFacts

OTHER_PIN = "sha256/" + "Q" * 43 + "="
BACKUP_PIN = "sha256/" + "R" * 43 + "="
POLICY = f"""version: 1
defaults:
  mode: MODE
  cleartext: allow
pin_sets:
  app:
    pins: [{OTHER_PIN}, {BACKUP_PIN}]
rules:
  - hosts: [api.test]
    app:
      source: "nsc.xml:4 <domain-config>"
      cleartext: forbid
      pins: app
      must_pin: true
      declared_at: {{cleartext: "nsc.xml:2 <base-config cleartextTrafficPermitted=\\"false\\">"}}
  - hosts: [www.test]
    app:
      source: "nsc.xml:9 <domain-config>"
      user_cas: trusted
"""


class Harness:
    def __init__(self, tctx: taddons.context, addons: list[object], findings: Path) -> None:
        self.tctx = tctx
        self.addon = next(a for a in addons if isinstance(a, Conformance))
        self.upstream = next(a for a in addons if isinstance(a, UpstreamTls))  # runs the app's judge on the server
        self.connections = next(a for a in addons if isinstance(a, Connections))
        self.metrics = next(a for a in addons if isinstance(a, MetricsExporter)).metrics
        self.findings_path = findings

    def findings(self) -> list[dict[str, Any]]:
        if not self.findings_path.exists():
            return []
        return [json.loads(line) for line in self.findings_path.read_text().splitlines()]

    def kinds(self) -> list[tuple[str, str, str]]:
        return [(f["check"], f["evidence"]["kind"], f["action"]) for f in self.findings()]

    def data(self, client: connection.Client, conn: connection.Connection) -> tls.TlsData:
        return tls.TlsData(conn, Context(client, self.tctx.options))

    def handshake(self, host: str, address: str = "127.0.0.1") -> connection.Client:
        """A client that completed its handshake with tlsgate's normal certificate for `host`."""
        client = tflow.tclient_conn()
        client.peername = (address, 40000)
        self.connections.of(client).settle(host)
        self.addon.tls_established_client(self.data(client, client))
        return client

    def request(self, client: connection.Client, host: str, scheme: str = "https"):
        port = 443 if scheme == "https" else 80
        flow = tflow.tflow(client_conn=client, req=tutils.treq(host=host, port=port, scheme=scheme.encode()))
        flow.client_conn.timestamp_tls_setup = 1.0 if scheme == "https" else None
        self.addon.requestheaders(flow)
        return flow


@pytest.fixture(params=["report", "enforce"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    addons = make_addons()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("MODE", request.param))
    findings = tmp_path / "findings.jsonl"
    with taddons.context(TlsConfig(), *addons) as tctx:
        store = next(a for a in addons if isinstance(a, PolicyStore))
        sink = next(a for a in addons if isinstance(a, FindingsSink))
        tctx.configure(store, tlsgate_policy=[str(policy)])
        tctx.configure(sink, tlsgate_findings=str(findings))
        try:
            yield Harness(tctx, addons, findings)
        finally:
            sink.done()


def enforcing(harness: Harness) -> bool:
    return harness.connections.store.policy.defaults.mode == "enforce"


def test_cleartext_to_a_forbidden_host_names_the_declaring_element(harness: Harness) -> None:
    client = tflow.tclient_conn()
    flow = harness.request(client, "api.test", "http")
    (finding,) = harness.findings()
    assert (finding["check"], finding["evidence"]["kind"]) == ("conformance", "cleartext_forbidden")
    assert finding["evidence"]["declared_at"] == 'nsc.xml:2 <base-config cleartextTrafficPermitted="false">'
    assert (flow.response is not None) is enforcing(harness)
    if flow.response is not None:
        assert flow.response.status_code == 403 and flow.response.headers["X-Tlsgate-Check"] == "conformance"
    harness.request(tflow.tclient_conn(), "www.test", "http")
    assert len(harness.findings()) == 1  # www.test declares nothing about cleartext


def test_data_over_tlsgates_certificate_on_a_must_pin_host_is_not_pinned(harness: Harness) -> None:
    client = harness.handshake("api.test")
    first, second = harness.request(client, "api.test"), harness.request(client, "api.test")
    action = "blocked" if enforcing(harness) else "reported"
    assert harness.kinds() == [("pinning", "not_pinned", action)]  # said once per connection
    labels = {"check": "pinning", "kind": "not_pinned", "action": action}
    assert harness.metrics.registry.get_sample_value("tlsgate_app_conformance_total", labels) == 1
    for flow in (first, second):
        assert (flow.response is not None and flow.response.status_code == 403) is enforcing(harness)


def test_a_release_build_trusting_user_cas_is_said_once_per_device_and_host(harness: Harness) -> None:
    for _ in range(2):
        harness.request(harness.handshake("www.test"), "www.test")
    assert harness.kinds() == [("conformance", "user_cas_in_release", "reported")]


def test_refusals_become_pinned_ca_not_installed_or_undetermined_by_what_the_device_did(harness: Harness) -> None:
    refusing = harness.handshake("api.test", "10.0.0.1")
    harness.addon.client_disconnected(refusing)  # a completed handshake, then silence: the pin check failed
    assert harness.kinds() == [("pinning", "undetermined", "reported")]
    harness.request(harness.handshake("www.test", "10.0.0.1"), "www.test")  # the CA is installed after all
    assert ("pinning", "pinned", "passed") in harness.kinds()

    other = tflow.tclient_conn()
    other.peername = ("10.0.0.2", 1)
    harness.connections.of(other).settle("www.test")
    other.error = "tlsv1 alert unknown ca"
    harness.addon.tls_failed_client(harness.data(other, other))
    again = tflow.tclient_conn()
    again.peername = ("10.0.0.2", 2)
    harness.connections.of(again).settle("api.test")
    again.error = "tlsv1 alert unknown ca"
    harness.addon.tls_failed_client(harness.data(again, again))
    missing = [f for f in harness.findings() if f["evidence"]["kind"] == "ca_not_installed"]
    assert len(missing) == 1 and missing[0]["client"] == "10.0.0.2:2" and missing[0]["evidence"]["refused_for"] == ["www.test"]


def test_a_server_matching_none_of_the_apps_pins_is_refused_in_enforce_mode(harness: Harness) -> None:
    chain = make_chain(dns=("api.test",))
    client = tflow.tclient_conn()
    state = harness.connections.of(client)
    match = state.settle("api.test")
    server = tflow.tserver_conn()
    facts = HandshakeFacts("TLSv1.3", "TLS_AES_128_GCM_SHA256", list(chain.certs))
    state.servers[server.id] = ServerSide(match, facts, phases={Phase.CHAIN})  # as after the verify callback
    harness.upstream.tls_established_server(harness.data(client, server))
    (finding,) = harness.findings()
    assert (finding["check"], finding["evidence"]["kind"]) == ("conformance", "pin_mismatch")
    assert finding["evidence"]["days_left"] == {"app": None}
    flow = tflow.tflow(client_conn=client, server_conn=server, req=tutils.treq(host="api.test", port=443, scheme=b"https"))
    flow.client_conn.timestamp_tls_setup = 1.0
    harness.addon.requestheaders(flow)
    assert (flow.response is not None and flow.response.headers["X-Tlsgate-Check"] == "conformance") is enforcing(harness)


def test_a_conformance_check_that_raises_blocks_the_request(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> None:
        raise ValueError("broken")

    monkeypatch.setattr("tlsgate.checks.conformance.judge_cleartext", broken)
    flow = harness.request(tflow.tclient_conn(), "api.test", "http")
    assert flow.response is not None and flow.response.status_code == 403  # in report mode too: nothing unjudged leaves
    assert harness.kinds() == [("request", "check_failed", "blocked")]


def test_a_server_check_that_raises_refuses_the_servers_requests(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> None:
        raise ValueError("broken")

    monkeypatch.setattr("tlsgate.checks.conformance.judge_server", broken)
    client = tflow.tclient_conn()
    state = harness.connections.of(client)
    server = tflow.tserver_conn()
    state.servers[server.id] = ServerSide(state.settle("api.test"), HandshakeFacts("TLSv1.3", None, []), phases={Phase.CHAIN})
    harness.upstream.tls_established_server(harness.data(client, server))
    flow = tflow.tflow(client_conn=client, server_conn=server, req=tutils.treq(host="api.test", port=443, scheme=b"https"))
    flow.client_conn.timestamp_tls_setup = 1.0
    harness.addon.requestheaders(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert harness.kinds() == [("conformance", "check_failed", "blocked")]


def test_a_block_says_what_to_change_in_the_app_and_in_the_policy(harness: Harness) -> None:
    flow = harness.request(tflow.tclient_conn(), "api.test", "http")
    (finding,) = harness.findings()
    assert "https://" in finding["remedy"] and "set 'mode: report' in the rule at" in finding["remedy"]
    assert finding["rule"].endswith("policy.yaml:9")  # the rule for api.test
    if flow.response is not None:
        assert b"mode: report" in flow.response.content and flow.response.headers["X-Tlsgate-Rule"] == finding["rule"]
