"""tlsgate's add-ons inside mitmproxy's own test harness: real options, real flows, no sockets.

Every test wires the add-ons exactly as `make_addons()` does, loads a policy from a file through
the `tlsgate_policy` option and reads the findings back from the JSON-lines file, so what is
asserted is what a tester would see. Hooks are called directly, so an exception fails the test
(inside mitmproxy it would be logged and the flow would go on: a crash in a check fails open).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import connection, exceptions, hooks, http, tls
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.addons.tlsconfig import TlsConfig
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.test import taddons, tflow, tutils
from OpenSSL import SSL, crypto

from tests.certgen import make_chain
from tests.unit.test_clienthello import extension, hello_body, sni_ext, u16_list, vec8
from tlsgate.addons import make_addons
from tlsgate.addons.cleartext import CleartextGuard
from tlsgate.addons.client_audit import ClientAudit
from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.metrics import MetricsExporter, parse_listen
from tlsgate.addons.policy import PolicyStore
from tlsgate.addons.resolve import Resolve
from tlsgate.addons.state import Audit, Connections, ServerSide, request_host, server_host
from tlsgate.addons.upstream_tls import UpstreamTls
from tlsgate.checks.model import Effect
from tlsgate.checks.probes import CLOSED_AFTER_HANDSHAKE, ProbeRun
from tlsgate.checks.upstream import HandshakeFacts
from tlsgate.policy import Mode
from tlsgate.policy.loader import display_path
from tlsgate.sinks.findings import Finding
from tlsgate.tls.clienthello import parse_client_hello
from tlsgate.tls.pins import spki_pin

POLICY = """\
version: 1
defaults:
  mode: enforce
  cleartext: block
devices:
  127.0.0.1: pixel-7
rules:
  - hosts: [open.test]
    cleartext: allow
  - hosts: [report.test]
    mode: report
  - hosts: [api.test]
    mode: enforce
"""
LINE = {"defaults": 2, "open.test": 8, "report.test": 10, "api.test": 12}
SECRET = "SECRET"


@dataclass
class Gate:
    """The add-ons of `make_addons()` in a mitmproxy test context, with the files they read and write."""

    tctx: taddons.context
    store: PolicyStore
    sink: FindingsSink
    exporter: MetricsExporter
    resolve: Resolve
    guard: CleartextGuard
    upstream: UpstreamTls
    audit: ClientAudit
    connections: Connections
    policy_path: Path
    findings_path: Path

    def rule(self, name: str) -> str:
        return f"{display_path(self.policy_path)}:{LINE[name]}"

    def findings(self) -> list[dict[str, Any]]:
        if not self.findings_path.exists():
            return []
        return [json.loads(line) for line in self.findings_path.read_text().splitlines()]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.exporter.metrics.registry.get_sample_value(name, labels)


def by_type(addons: list[object], kind: type) -> Any:
    (found,) = [a for a in addons if isinstance(a, kind)]
    return found


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    addons = make_addons()
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY)
    findings_path = tmp_path / "findings.jsonl"
    # mitmproxy's tlsconfig only for its options (tls_version_client_min): no certificate store is built.
    with taddons.context(TlsConfig(), *addons) as tctx:
        store = by_type(addons, PolicyStore)
        sink = by_type(addons, FindingsSink)
        tctx.configure(store, tlsgate_policy=[str(policy_path)])
        tctx.configure(sink, tlsgate_findings=str(findings_path))
        gate = Gate(
            tctx,
            store,
            sink,
            by_type(addons, MetricsExporter),
            by_type(addons, Resolve),
            by_type(addons, CleartextGuard),
            by_type(addons, UpstreamTls),
            by_type(addons, ClientAudit),
            by_type(addons, Connections),
            policy_path,
            findings_path,
        )
        try:
            yield gate
        finally:
            sink.done()


def plain(
    host: str = "api.test", path: str = "/path", headers: list[tuple[bytes, bytes]] | None = None, **kw: Any
) -> http.HTTPFlow:
    hdrs = http.Headers(headers if headers is not None else [(b"host", host.encode())])
    return tflow.tflow(req=tutils.treq(host=host, port=80, path=path.encode(), headers=hdrs, **kw))


# -- CleartextGuard ------------------------------------------------------------------------------------


def test_cleartext_request_is_blocked_with_a_403_naming_check_and_rule(gate: Gate) -> None:
    flow = plain("api.test", headers=[(b"host", b"api.test"), (b"user-agent", b"okhttp/4.12")])
    gate.guard.request(flow)
    rule = gate.rule("api.test")
    assert flow.response is not None and flow.response.status_code == 403
    assert flow.response.headers["X-Tlsgate-Check"] == "cleartext"
    assert flow.response.headers["X-Tlsgate-Rule"] == rule
    assert flow.response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"Blocked by tlsgate: cleartext" in flow.response.content
    assert flow.metadata["tlsgate"] == {"check": "cleartext", "action": "blocked", "rule": rule}
    assert flow.marked == ":no_entry:" and flow.comment.startswith(f"tlsgate blocked: cleartext ({rule}): plain http://")
    (finding,) = gate.findings()
    assert {k: finding[k] for k in ("check", "action", "severity", "host", "port", "client", "device", "rule")} == {
        "check": "cleartext",
        "action": "blocked",
        "severity": "medium",
        "host": "api.test",
        "port": 80,
        "client": "127.0.0.1:22",
        "device": "pixel-7",
        "rule": rule,
    }
    assert finding["evidence"]["url"] == "http://api.test/path" and finding["evidence"]["user_agent"] == "okhttp/4.12"


def test_block_page_is_json_for_clients_that_accept_json(gate: Gate) -> None:
    flow = plain("api.test", headers=[(b"host", b"api.test"), (b"accept", b"application/json")])
    gate.guard.request(flow)
    assert flow.response is not None and flow.response.headers["Content-Type"] == "application/json"
    body = json.loads(flow.response.content)
    assert (body["check"], body["host"], body["rule"]) == ("cleartext", "api.test", gate.rule("api.test"))


def test_cleartext_in_report_mode_is_recorded_and_forwarded(gate: Gate) -> None:
    flow = plain("report.test")
    gate.guard.request(flow)
    assert flow.response is None
    assert flow.metadata["tlsgate"] == {"check": "cleartext", "action": "reported", "rule": gate.rule("report.test")}
    assert [(f["action"], f["host"]) for f in gate.findings()] == [("reported", "report.test")]


def test_cleartext_allowed_by_rule_is_untouched(gate: Gate) -> None:
    flow = plain("open.test")
    gate.guard.request(flow)
    assert flow.response is None and "tlsgate" not in flow.metadata and gate.findings() == []


def test_host_without_a_rule_falls_to_the_defaults(gate: Gate) -> None:
    flow = plain("elsewhere.test")
    gate.guard.request(flow)
    assert flow.response is not None and flow.response.headers["X-Tlsgate-Rule"] == gate.rule("defaults")


@pytest.mark.parametrize(
    "flow_factory",
    [
        lambda: tflow.tflow(req=tutils.treq(host="api.test", port=443, scheme=b"https")),
        lambda: tflow.tflow(req=tutils.treq(host="api.test", port=443, method=b"CONNECT", scheme=b"http")),
        lambda: tflow.tflow(req=tutils.treq(host="api.test", port=80), resp=True),
        lambda: tflow.tflow(req=tutils.treq(host="api.test", port=80), err=True),
        lambda: tflow.tflow(req=tutils.treq(host="api.test", port=80), live=False),
    ],
    ids=["https", "connect", "answered", "failed", "not-live"],
)
def test_guard_leaves_other_flows_alone(gate: Gate, flow_factory) -> None:
    flow = flow_factory()
    response = flow.response
    gate.guard.request(flow)
    assert flow.response is response and "tlsgate" not in flow.metadata and gate.findings() == []


def test_transparent_mode_matches_the_host_header_not_the_ip(gate: Gate) -> None:
    allowed = plain("192.0.2.10", headers=[(b"host", b"open.test")])
    gate.guard.request(allowed)
    assert allowed.response is None and gate.findings() == []

    blocked = plain("192.0.2.10", headers=[(b"host", b"report.test:8080")])
    gate.guard.request(blocked)
    assert blocked.metadata["tlsgate"]["rule"] == gate.rule("report.test")
    assert gate.findings()[0]["host"] == "report.test"


def test_credentials_are_named_and_never_valued(gate: Gate) -> None:
    flow = plain(
        "api.test",
        path=f"/login?token={SECRET}&page=2",
        headers=[(b"host", b"api.test"), (b"authorization", b"Bearer x"), (b"content-type", b"application/json")],
        content=json.dumps({"user": "alice", "password": SECRET}).encode(),
    )
    gate.guard.request(flow)
    (finding,) = gate.findings()
    assert finding["severity"] == "high"
    assert finding["evidence"]["credentials"] == [
        {"kind": "authorization", "name": "authorization: Bearer"},
        {"kind": "query", "name": "token"},
        {"kind": "json", "name": "password"},
    ]
    assert finding["evidence"]["url"] == "http://api.test/login?token=[REDACTED]&page=2"
    raw = gate.findings_path.read_text()
    assert SECRET not in raw and "Bearer x" not in raw
    assert flow.response is not None
    page = flow.response.get_text()
    assert SECRET not in page and "Bearer x" not in page and "authorization: Bearer" in page


def test_a_bare_authorization_token_is_not_quoted_as_its_scheme(gate: Gate) -> None:
    flow = plain("api.test", headers=[(b"host", b"api.test"), (b"authorization", SECRET.encode() * 3)])
    gate.guard.request(flow)
    assert gate.findings()[0]["evidence"]["credentials"] == [{"kind": "authorization", "name": "authorization: no scheme"}]
    assert SECRET not in gate.findings_path.read_text() and SECRET.encode() not in flow.response.content


@pytest.mark.parametrize(
    ("host", "path", "headers", "content"),
    [
        ("api.test", b"/\xff\xfe?token=\xff\x00", [(b"host", b"api.test")], b""),
        ("api.test", b"/", [(b"host", b"api.test"), (b"user-agent", b"\xff\xfe<b>"), (b"cookie", b"\xff=\xfe")], b""),
        ("192.0.2.1", b"/", [(b"host", b"\xff\xfe:99999")], b""),
        ("192.0.2.1", b"/", [(b"host", "api.test:\u00b2".encode())], b""),  # "²".isdigit() but int("²") raises
        ("api.test", b"/", [(b"host", b"api.test"), (b"content-type", b"application/json")], b"[" * 50_000),
        ("api.test", b"/", [(b"host", b"api.test"), (b"content-type", b"application/json\xff")], b"\xff\xfe{"),
        ("api.test", b"/", [(b"host", b"api.test"), (b"content-type", b"multipart/form-data")], b'name="\xff"'),
    ],
    ids=["path", "user-agent", "host-header", "superscript-port", "json-nesting", "content-type", "multipart"],
)
def test_hostile_bytes_are_still_blocked(gate: Gate, host: str, path: bytes, headers, content: bytes) -> None:
    flow = tflow.tflow(req=tutils.treq(host=host, port=80, path=path, headers=http.Headers(headers), content=content))
    gate.guard.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert [f["action"] for f in gate.findings()] == ["blocked"]


def test_no_policy_loaded_means_no_verdict() -> None:
    store = PolicyStore()
    guard = CleartextGuard(Connections(store), FindingsSink())
    flow = plain("api.test")
    guard.request(flow)
    assert flow.response is None


# -- UpstreamTls -----------------------------------------------------------------------------------------


def test_upstream_tls_needs_eager_connections() -> None:
    upstream = UpstreamTls(Connections(PolicyStore()), FindingsSink())
    with taddons.context(Proxyserver(), upstream) as tctx:  # mitmproxy's proxyserver owns connection_strategy
        with pytest.raises(exceptions.OptionsError, match="connection_strategy=eager"):
            tctx.configure(upstream, connection_strategy="lazy")
        assert tctx.options.connection_strategy == "eager"  # rolled back
        tctx.configure(upstream, connection_strategy="eager")


@pytest.mark.parametrize("option", ["emudhra", "emudhra_old"])
def test_upstream_tls_refuses_mitmproxys_public_emudhra_chain(option: str) -> None:
    """mitmproxy 12.3's emudhra options sign with a public, compromised chain instead of tlsgate's CA and silently
    drop the apps' revocation requests to it: every probe and CA statement tlsgate makes would be wrong."""
    from mitmproxy.addons.tlsconfig import TlsConfig

    upstream = UpstreamTls(Connections(PolicyStore()), FindingsSink())
    with taddons.context(Proxyserver(), TlsConfig(), upstream) as tctx:
        with pytest.raises(exceptions.OptionsError, match=f"tlsgate refuses {option}"):
            tctx.configure(upstream, **{option: True})
        assert getattr(tctx.options, option) is False  # rolled back


def blocked_finding(check: str = "pin", rule: str = "p.yaml:12") -> Finding:
    return Finding(check, "blocked", "critical", "api.test", 443, "127.0.0.1:22", rule, f"{check} said no", "fix it")


def test_requests_on_a_refused_server_connection_get_the_block_page(gate: Gate) -> None:
    flow = tflow.tflow(req=tutils.treq(host="api.test", port=443, scheme=b"https"))
    state = gate.connections.of(flow.client_conn)
    state.servers[flow.server_conn.id] = ServerSide(state.settle("api.test"), HandshakeFacts(), blocked=blocked_finding())
    gate.upstream.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert flow.response.headers["X-Tlsgate-Check"] == "pin" and flow.response.headers["X-Tlsgate-Rule"] == "p.yaml:12"
    assert flow.metadata["tlsgate"] == {"check": "pin", "action": "blocked", "rule": "p.yaml:12"}

    other = tflow.tflow(client_conn=flow.client_conn, req=tutils.treq(host="api.test", port=443, scheme=b"https"))
    gate.upstream.request(other)  # another server connection of the same client: not refused
    assert other.response is None


def test_tcp_on_a_refused_server_connection_is_killed(gate: Gate) -> None:
    flow = tflow.ttcpflow()
    state = gate.connections.of(flow.client_conn)
    state.servers[flow.server_conn.id] = ServerSide(state.settle("api.test"), HandshakeFacts(), blocked=blocked_finding())
    gate.upstream.tcp_start(flow)
    assert flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE and not flow.live

    fine = tflow.ttcpflow(client_conn=flow.client_conn)
    gate.upstream.tcp_start(fine)
    assert fine.error is None and fine.live


class FakeSsl:
    """What the verify callback reads from OpenSSL's connection mid-handshake."""

    def __init__(self, protocol: str, cipher: str) -> None:
        self.protocol, self.cipher = protocol, cipher

    def get_protocol_version_name(self) -> str:
        return self.protocol

    def get_cipher_name(self) -> str:
        return self.cipher


def tls_data(client: connection.Client, conn: connection.Connection, gate: Gate, ssl_conn=None) -> tls.TlsData:
    return tls.TlsData(conn, Context(client, gate.tctx.options), ssl_conn)


def pinned_policy(gate: Gate, mode: str = "enforce") -> None:
    gate.policy_path.write_text(
        POLICY
        + f"""  - hosts: [pinned.test]
    mode: {mode}
    pins: ['sha256/{"A" * 43}=', 'sha256/{"B" * 43}=']
"""
    )
    gate.tctx.configure(gate.store, tlsgate_policy=[str(gate.policy_path)])


@pytest.mark.parametrize(("mode", "accepted", "action"), [("enforce", False, "blocked"), ("report", True, "reported")])
def test_verify_callback_refuses_a_pin_mismatch_and_requests_are_answered(
    gate: Gate, mode: str, accepted: bool, action: str
) -> None:
    pinned_policy(gate, mode)
    chain = make_chain(dns=("pinned.test",))
    client, server = tflow.tclient_conn(), tflow.tserver_conn()
    server.sni = "pinned.test"
    state = gate.connections.of(client)
    side = ServerSide(state.settle("pinned.test"), HandshakeFacts())
    state.servers[server.id] = side
    callback = gate.upstream._verify_callback(side)
    ssl = FakeSsl("TLSv1.3", "TLS_AES_128_GCM_SHA256")
    for depth, cert in ((2, chain.root.cert), (1, chain.intermediate.cert)):
        assert callback(ssl, crypto.X509.from_cryptography(cert), 0, depth, 1) is True
    assert callback(ssl, crypto.X509.from_cryptography(chain.leaf.cert), 0, 0, 1) is accepted
    assert [i.kind for i in side.issues] == ["pin_mismatch"] and side.facts.chain == chain.certs

    if accepted:
        gate.upstream.tls_established_server(tls_data(client, server, gate, SSL.Connection(SSL.Context(SSL.TLS_METHOD))))
    else:
        gate.upstream.tls_failed_server(tls_data(client, server, gate))
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["host"], finding["port"]) == ("pin", action, "pinned.test", 22)
    assert finding["evidence"]["kind"] == "pin_mismatch" and finding["evidence"]["negotiated_version"] == "TLSv1.3"
    assert [c["pin"] for c in finding["evidence"]["chain"]] == [spki_pin(c) for c in chain.certs]
    assert "or set 'mode: report' in the rule at" in finding["remedy"]
    assert gate.sample("tlsgate_pin_checks_total", result="mismatch") == 1
    assert gate.sample("tlsgate_upstream_connections_total", decision=action, check="pin", transport="tcp") == 1

    flow = tflow.tflow(client_conn=client, server_conn=server, req=tutils.treq(host="pinned.test", port=443, scheme=b"https"))
    gate.upstream.request(flow)
    assert (flow.response is None) is accepted


def test_verify_callback_fails_closed_when_a_check_crashes(gate: Gate, caplog: pytest.LogCaptureFixture) -> None:
    client = tflow.tclient_conn()
    state = gate.connections.of(client)
    side = ServerSide(state.settle("api.test"), HandshakeFacts())

    class NoCert:
        def to_cryptography(self):
            raise ValueError("unparseable certificate")

    with caplog.at_level(logging.ERROR, logger="tlsgate.tls"):
        assert gate.upstream._verify_callback(side)(FakeSsl("TLSv1.3", "x"), NoCert(), 0, 0, 1) is False
    assert [(i.kind, i.effect) for i in side.issues] == [("check_failed", Effect.ALWAYS)]
    assert "refusing the connection" in caplog.text


def test_failed_upstream_handshake_blocks_in_every_mode(gate: Gate) -> None:
    client, server = tflow.tclient_conn(), tflow.tserver_conn()
    server.error = "OpenSSL Error([('SSL routines', '', 'sslv3 alert handshake failure')])"
    state = gate.connections.of(client)
    state.servers[server.id] = ServerSide(state.settle("report.test"), HandshakeFacts())
    gate.upstream.tls_failed_server(tls_data(client, server, gate))
    gate.upstream.tls_failed_server(tls_data(client, server, gate))  # said once per server connection
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["evidence"]["kind"]) == ("cipher", "blocked", "no_common_suite")
    flow = tflow.tflow(client_conn=client, server_conn=server, req=tutils.treq(host="report.test", port=443, scheme=b"https"))
    gate.upstream.request(flow)
    assert flow.response is not None and flow.response.headers["X-Tlsgate-Check"] == "cipher"


# -- ClientAudit -----------------------------------------------------------------------------------------


def client_hello(version: int = 0x0303, sni: str | None = "api.test", supported: tuple[int, ...] = (0x0304, 0x0303)) -> bytes:
    extensions = [sni_ext(sni)] if sni else []
    if supported:
        extensions.append(extension(43, vec8(u16_list(list(supported)))))
    return hello_body(version, [0x1301, 0xC02F], extensions)


def probed(gate: Gate, client: connection.Client, kind: str = "self_signed") -> Audit:
    state = gate.connections.of(client)
    match = state.settle("api.test")
    audit = Audit(parse_client_hello(client_hello()), 443)
    audit.run = ProbeRun(kind, match.host, {"kind": kind, "subject": "CN=api.test"})
    state.audit = audit
    return audit


def test_a_client_that_accepted_a_probe_gets_403s_and_one_critical_finding(gate: Gate) -> None:
    client = tflow.tclient_conn()
    audit = probed(gate, client)
    audit.run.handshake_done = True
    responses = []
    for path in (f"/login?token={SECRET}", "/second"):
        flow = tflow.tflow(
            client_conn=client,
            req=tutils.treq(
                host="api.test", port=443, scheme=b"https", path=path.encode(), headers=http.Headers(user_agent="MyApp/2.1")
            ),
        )
        gate.audit.requestheaders(flow)
        gate.audit.request(flow)
        responses.append(flow.response)
    assert [r.status_code for r in responses] == [403, 403]
    assert all(r.headers["X-Tlsgate-Check"] == "client_probe" for r in responses)
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["severity"], finding["host"]) == (
        "client_probe",
        "blocked",
        "critical",
        "api.test",
    )
    evidence = finding["evidence"]
    assert evidence["kind"] == "self_signed" and evidence["user_agent"] == "MyApp/2.1" and evidence["sni"] == "api.test"
    assert evidence["sent"] == {
        "protocol": "http",
        "method": "GET",
        "url": "https://api.test/login?token=[REDACTED]",
        "credentials": [{"kind": "query", "name": "token"}],
    }
    assert SECRET not in gate.findings_path.read_text()


def test_a_streamed_request_on_an_accepted_probe_is_killed_before_its_body_flows(gate: Gate) -> None:
    client = tflow.tclient_conn()
    probed(gate, client).run.handshake_done = True
    flow = tflow.tflow(client_conn=client, req=tutils.treq(host="api.test", port=443, scheme=b"https"))
    flow.request.stream = True
    gate.audit.requestheaders(flow)
    assert flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE
    assert [f["check"] for f in gate.findings()] == ["client_probe"]


def test_a_client_that_hung_up_after_the_probe_handshake_passed(gate: Gate) -> None:
    client = tflow.tclient_conn()
    audit = probed(gate, client, "wrong_host")
    gate.audit.tls_established_client(tls_data(client, client, gate))
    assert audit.run.handshake_done
    gate.audit.client_disconnected(client)
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["severity"]) == ("client_probe", "passed", "info")
    assert finding["evidence"]["rejection"] == CLOSED_AFTER_HANDSHAKE and finding["evidence"]["kind"] == "wrong_host"


def test_a_probe_refused_with_an_alert_passes_and_another_failure_is_tried_again(gate: Gate) -> None:
    client = tflow.tclient_conn()
    audit = probed(gate, client)
    gate.audit.schedule.next_kind("127.0.0.1", "api.test", ("self_signed",))
    client.error = "OpenSSL Error([('SSL routines', '', 'tlsv1 alert unknown ca')])"
    gate.audit.tls_failed_client(tls_data(client, client, gate))
    assert [(f["check"], f["action"], f["evidence"]["rejection"]) for f in gate.findings()] == [
        ("client_probe", "passed", "unknown ca")
    ]
    assert audit.run.passed is not None

    other = tflow.tclient_conn()
    probed(gate, other, "expired")
    gate.audit.schedule.next_kind("127.0.0.1", "api.test", ("self_signed", "expired"))
    other.error = "no shared cipher"
    gate.audit.tls_failed_client(tls_data(other, other, gate))
    assert len(gate.findings()) == 1
    assert gate.audit.schedule.tried("127.0.0.1", "api.test") == ("self_signed",)  # "expired" given back


def test_a_probe_openssl_will_not_serve_leaves_a_normal_connection_and_no_verdict(
    gate: Gate, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.certgen import make_root
    from tlsgate.addons import client_audit
    from tlsgate.tls.probes import ProbeMint

    root = make_root("tlsgate CA")
    client = tflow.tclient_conn()
    audit = probed(gate, client, "sha1_signature")
    audit.probe = ProbeMint(root.key, root.cert).certificate("api.test", "sha1_signature")

    def refuse(*args: object) -> SSL.Connection:
        raise SSL.Error([("SSL routines", "", "ca md too weak")])

    monkeypatch.setattr(client_audit, "client_connection", refuse)
    normal = SSL.Connection(SSL.Context(SSL.TLS_METHOD))
    start = tls_data(client, client, gate, normal)
    gate.audit.tls_start_client(start)
    assert start.ssl_conn is normal and audit.run is None and audit.probe is None
    assert "cannot serve the sha1_signature probe for api.test" in caplog.text
    flow = tflow.tflow(client_conn=client, req=tutils.treq(host="api.test", port=443, scheme=b"https"))
    gate.audit.requestheaders(flow)
    gate.audit.request(flow)
    assert flow.response is None, "a client shown tlsgate's good certificate accepted no probe"
    assert not [f for f in gate.findings() if f["check"] == "client_probe"]


def test_an_unprobed_client_refusing_tlsgates_certificate_is_explained(gate: Gate) -> None:
    client = tflow.tclient_conn()
    state = gate.connections.of(client)
    state.settle("api.test")
    state.audit = Audit(parse_client_hello(client_hello()), 443)
    client.error = "tlsv1 alert unknown ca"
    gate.audit.tls_failed_client(tls_data(client, client, gate, SSL.Connection(SSL.Context(SSL.TLS_METHOD))))
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["evidence"]["rejection"]) == ("client_trust", "reported", "unknown ca")


def test_an_old_client_hello_is_refused_in_enforce_mode_and_recorded(gate: Gate) -> None:
    client = tflow.tclient_conn()
    data = tls.ClientHelloData(Context(client, gate.tctx.options), tls.ClientHello(client_hello(0x0302, supported=())))
    data.establish_server_tls_first = True
    gate.audit.tls_clienthello(data)
    audit = gate.connections.peek(client).audit
    assert audit.refuse and audit.floor is None  # mitmproxy's own TLS 1.2 floor refuses it
    assert data.establish_server_tls_first is False  # the server never sees a refused client
    assert gate.findings() == []  # recorded once the handshake ends
    client.error = "unsupported protocol"
    gate.audit.tls_failed_client(tls_data(client, client, gate))
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["rule"]) == ("client_protocol", "blocked", gate.rule("api.test"))
    assert finding["evidence"]["best_offered_version"] == "1.1" and finding["evidence"]["ja3"]


def test_hello_findings_wait_for_the_user_agent_and_are_said_once_per_app(gate: Gate) -> None:
    for _ in range(2):  # two connections from one app (same address, same fingerprint)
        client = tflow.tclient_conn()
        data = tls.ClientHelloData(Context(client, gate.tctx.options), tls.ClientHello(client_hello(sni=None)))
        data.context.server.address = ("api.test", 443)
        gate.audit.tls_clienthello(data)
        flow = tflow.tflow(
            client_conn=client, req=tutils.treq(host="api.test", port=443, headers=http.Headers(user_agent="App/1"))
        )
        gate.audit.requestheaders(flow)
        gate.audit.request(flow)
        assert flow.response is None  # not a probe: nothing is answered
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["evidence"]["user_agent"]) == ("client_sni", "reported", "App/1")


# -- PolicyStore -----------------------------------------------------------------------------------------


def bump(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def test_policy_store_loads_the_configured_file(gate: Gate) -> None:
    policy = gate.store.policy
    assert policy is not None and policy.rule_count == 3 and policy.files == (display_path(gate.policy_path),)
    assert gate.store.paths == [str(gate.policy_path)]
    assert policy.match("report.test").settings.mode is Mode.REPORT
    assert gate.sample("tlsgate_policy_rules") == 3 and gate.sample("tlsgate_policy_reloads_total", result="ok") == 1


def test_a_broken_policy_is_refused_with_its_location(gate: Gate, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\ndefaults:\n  mode: block\n")
    with pytest.raises(exceptions.OptionsError) as caught:
        gate.tctx.configure(gate.store, tlsgate_policy=[str(broken)])
    assert f"{display_path(broken)}:3:9: defaults.mode must be one of enforce, report" in str(caught.value)
    assert gate.store.policy.rule_count == 3  # the good policy stays in force
    with pytest.raises(exceptions.OptionsError, match="must be 0"):
        gate.tctx.configure(gate.store, tlsgate_policy_reload=-1.0)


def test_reload_applies_a_good_edit_and_keeps_the_last_good_policy_on_a_broken_one(
    gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[tuple[str, object]] = []
    gate.store.subscribe(lambda result, policy: heard.append((result, policy)))
    assert gate.store.check_reload() is False  # nothing changed

    bump(
        gate.policy_path,
        POLICY.replace("  - hosts: [report.test]\n    mode: report\n", "  - hosts: [report.test]\n    mode: enforce\n"),
    )
    assert gate.store.check_reload() is False  # changed, but not yet stable for one poll
    assert gate.store.check_reload() is True
    assert gate.store.policy.match("report.test").settings.mode is Mode.ENFORCE
    assert [r for r, _ in heard] == ["ok"] and heard[0][1] is gate.store.policy
    good = gate.store.policy

    bump(gate.policy_path, "version: 1\nrules:\n  - hosts: [a.test]\n    cleartxt: allow\n")
    with caplog.at_level(logging.ERROR, logger="tlsgate.policy"):
        gate.store.check_reload()
        assert gate.store.check_reload() is True
    assert gate.store.policy is good
    assert heard[-1] == ("failed", None)
    assert f"{display_path(gate.policy_path)}:4:5: unknown key 'cleartxt'" in caplog.text
    assert "keeping the last good policy" in caplog.text
    assert gate.store.check_reload() is False  # a broken state is reported once, not every poll
    assert gate.sample("tlsgate_policy_reloads_total", result="failed") == 1


def test_requests_after_a_reload_are_judged_by_the_new_policy(gate: Gate) -> None:
    client = tflow.tclient_conn()
    state = gate.connections.of(client)
    settled = state.settle("report.test")
    assert settled.settings.mode is Mode.REPORT
    bump(gate.policy_path, POLICY.replace("mode: report", "mode: enforce"))
    gate.store.check_reload()
    gate.store.check_reload()
    assert state.match_for("report.test", None) is settled  # the connection's own policy
    assert state.match_for("report.test", gate.store.policy).settings.mode is Mode.ENFORCE
    flow = plain("report.test")
    flow.client_conn = client
    gate.guard.request(flow)
    assert flow.response is not None and flow.response.status_code == 403


# -- FindingsSink ----------------------------------------------------------------------------------------


def test_findings_file_is_owner_only_and_each_finding_is_a_console_line(gate: Gate, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tlsgate.findings"):
        gate.sink.record(blocked_finding("pin"))
        gate.sink.record(Finding("client_probe", "passed", "info", "api.test", None, None, "p.yaml:2", "refused"))
    assert stat.S_IMODE(gate.findings_path.stat().st_mode) == 0o600
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "tlsgate.findings"] == [
        (logging.ERROR, "tlsgate: [CRITICAL] blocked pin api.test:443 from 127.0.0.1:22 (rule p.yaml:12): pin said no"),
        (logging.INFO, "tlsgate: [INFO] passed client_probe api.test from ? (rule p.yaml:2): refused"),
    ]
    assert len(gate.findings()) == 2


def test_findings_file_that_cannot_be_opened_is_an_options_error(gate: Gate, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(exceptions.OptionsError, match="cannot open findings file"):
        gate.tctx.configure(gate.sink, tlsgate_findings=str(tmp_path / "file" / "findings.jsonl"))


# -- MetricsExporter -------------------------------------------------------------------------------------


def test_requests_are_counted_by_the_decision_on_the_flow(gate: Gate) -> None:
    blocked = plain("api.test")
    gate.guard.request(blocked)
    reported = plain("report.test")
    gate.guard.request(reported)
    reported.response = tutils.tresp(timestamp_start=reported.request.timestamp_end + 0.3)
    allowed = tflow.tflow(req=tutils.treq(host="api.test", port=443, scheme=b"https"), resp=True)
    for flow in (blocked, reported, allowed, allowed):
        gate.exporter.response(flow)
    errored = tflow.tflow(err=True)
    gate.exporter.error(errored)
    assert gate.sample("tlsgate_requests_total", decision="blocked", check="cleartext", transport="tcp") == 1
    assert gate.sample("tlsgate_requests_total", decision="reported", check="cleartext", transport="tcp") == 1
    assert gate.sample("tlsgate_requests_total", decision="allowed", check="none", transport="tcp") == 2
    assert gate.sample("tlsgate_requests_total", decision="error", check="none", transport="tcp") == 1
    assert gate.sample("tlsgate_upstream_response_seconds_count") == 3  # block pages are not upstream latency
    assert gate.sample("tlsgate_findings_total", severity="medium", check="cleartext", action="blocked", device="pixel-7") == 1


def test_open_connections_gauge(gate: Gate) -> None:
    client = tflow.tclient_conn()
    gate.exporter.client_connected(client)
    gate.exporter.client_connected(client)
    gate.exporter.client_disconnected(client)
    assert gate.sample("tlsgate_open_connections", side="client") == 1


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", None),
        ("127.0.0.1:9090", ("127.0.0.1", 9090)),
        (":0", ("127.0.0.1", 0)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        ("metrics.local:65535", ("metrics.local", 65535)),
    ],
)
def test_parse_listen_accepts(spec: str, expected: tuple[str, int] | None) -> None:
    assert parse_listen(spec) == expected


@pytest.mark.parametrize("spec", ["9090", "host:", "host:65536", "host:-1", "host:http", "host:9 0", "host:\u00b2"])
def test_parse_listen_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(spec)


def test_a_bad_listen_spec_is_an_options_error(gate: Gate) -> None:
    with pytest.raises(exceptions.OptionsError, match="tlsgate_metrics_listen"):
        gate.tctx.configure(gate.exporter, tlsgate_metrics_listen="nowhere")


# -- Resolve ---------------------------------------------------------------------------------------------


def connect_data(host: str, port: int, sni: str | None = None) -> server_hooks.ServerConnectionHookData:
    server = tflow.tserver_conn()
    server.address, server.sni = (host, port), sni
    return server_hooks.ServerConnectionHookData(server, tflow.tclient_conn())


def test_resolve_rewrites_the_address_and_keeps_the_name_for_sni(gate: Gate) -> None:
    gate.tctx.configure(gate.resolve, tlsgate_resolve=["api.test:443:127.0.0.1", "*.wild.test:*:10.0.0.9", "cdn.test:*:[::1]"])
    data = connect_data("api.test", 443)
    gate.resolve.server_connect(data)
    assert data.server.address == ("127.0.0.1", 443) and data.server.sni == "api.test"

    kept = connect_data("API.test.", 443, sni="api.test")  # names are normalised; an SNI already set stays
    gate.resolve.server_connect(kept)
    assert kept.server.address == ("127.0.0.1", 443) and kept.server.sni == "api.test"

    any_port = connect_data("cdn.test", 8443)
    gate.resolve.server_connect(any_port)
    assert any_port.server.address == ("::1", 8443) and any_port.server.sni == "cdn.test"

    for host, port in (("api.test", 8443), ("other.test", 443)):
        untouched = connect_data(host, port)
        gate.resolve.server_connect(untouched)
        assert untouched.server.address == (host, port) and untouched.server.sni is None


@pytest.mark.parametrize("spec", ["api.test:443", "api.test:0:127.0.0.1", "api.test:443:not-an-ip", "api.test:x:127.0.0.1"])
def test_resolve_rejects_a_bad_spec(gate: Gate, spec: str) -> None:
    with pytest.raises(exceptions.OptionsError, match="tlsgate_resolve"):
        gate.tctx.configure(gate.resolve, tlsgate_resolve=[spec])


# -- Connections and ConnState ----------------------------------------------------------------------------


def test_state_is_made_once_per_client_and_names_the_device(gate: Gate) -> None:
    client = tflow.tclient_conn()
    assert gate.connections.peek(client) is None
    state = gate.connections.of(client)
    assert gate.connections.of(client) is state and gate.connections.peek(client) is state
    assert state.device == "pixel-7" and state.policy is gate.store.policy
    stranger = tflow.tclient_conn()
    stranger.peername = ("10.9.9.9", 5555)
    assert gate.connections.of(stranger).device is None
    assert len(gate.connections) == 2


def test_settle_keeps_the_first_host(gate: Gate) -> None:
    state = gate.connections.of(tflow.tclient_conn())
    first = state.settle("Report.Test:443")
    assert state.host == "report.test" and first.host == "report.test"
    assert state.settle("api.test") is first and state.host == "report.test"
    assert state.match_for("report.test", gate.store.policy) is first
    assert state.match_for("api.test", gate.store.policy).rule_ref == gate.rule("api.test")  # another host of a proxy connection


def test_state_is_dropped_when_the_client_disconnects(gate: Gate) -> None:
    client = tflow.tclient_conn()
    gate.connections.of(client)
    gate.audit.client_disconnected(client)  # add-ons before the table still see the state
    assert gate.connections.peek(client) is not None
    gate.connections.client_disconnected(client)
    assert gate.connections.peek(client) is None and len(gate.connections) == 0
    gate.connections.client_disconnected(client)  # twice is harmless


def test_request_and_server_host() -> None:
    assert request_host(tutils.treq(host="api.test")) == "api.test"
    ip_with_name = tutils.treq(host="192.0.2.1", headers=http.Headers(host="api.test:8080"))
    assert request_host(ip_with_name) == "api.test"
    assert request_host(tutils.treq(host="::1", headers=http.Headers(host="[::1]:8080"))) == "::1"
    assert request_host(tutils.treq(host="192.0.2.1", headers=http.Headers())) == "192.0.2.1"
    server = tflow.tserver_conn()
    assert server_host(server) == "address"  # the SNI
    server.sni = None
    assert server_host(server) == "address"
    server.address = None
    assert server_host(server) == ""


# -- make_addons ------------------------------------------------------------------------------------------


def test_make_addons_loads_and_configures_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    addons = make_addons()
    assert isinstance(addons[-1], Connections)
    assert [type(a).__name__ for a in addons] == [
        "SafeLog",
        "ClientAccess",
        "ClientLimits",
        "AuthThrottle",
        "PolicyStore",
        "FindingsSink",
        "MetricsExporter",
        "Resolve",
        "WireGuardPeers",
        "Lifetime",
        "RequestHygiene",
        "DestinationGuard",
        "CleartextGuard",
        "QuicGuard",
        "UpstreamTimeouts",
        "UpstreamTls",
        "ClientAudit",
        "Conformance",
        "PayloadInspector",
        "ContainFailures",
        "ClientBounds",
        "Connections",
    ]
    store = addons[[type(a).__name__ for a in addons].index("PolicyStore")]
    assert all(getattr(a, "connections", addons[-1]) is addons[-1] for a in addons)
    assert addons[-1].store is store
    with caplog.at_level(logging.WARNING), taddons.context(*addons) as tctx:
        for addon in addons:  # what mitmproxy does at startup: configure with every option
            tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(tctx.options.keys())))
        assert store.policy is not None and store.policy.files == ("policies/default.yaml",)
        flow = plain("anything.test")
        for addon in addons:
            if hasattr(addon, "request"):
                result = addon.request(flow)
                assert not inspect.isawaitable(result)  # nothing is left to scan once a verdict answered it
        assert flow.response is not None and flow.response.headers["X-Tlsgate-Rule"] == "policies/default.yaml:5"
    assert "Addon error" not in caplog.text


# -- DestinationGuard ----------------------------------------------------------------------------------


def test_a_proxied_name_is_not_resolved_at_its_request_headers(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blocked plain-HTTP request must cost no DNS lookup: lookups for thousands of distinct names filled the
    resolver's threads and stalled every client (benchmarks/run.py's distinct-hosts step hung). Literals and
    localhost need no lookup and are still refused at the headers."""
    import asyncio

    from tlsgate.addons import destination
    from tlsgate.addons.destination import DestinationGuard

    looked_up: list[str] = []

    async def spy(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(destination, "addresses_of", spy)
    (guard,) = [a for a in gate.tctx.master.addons.chain if isinstance(a, DestinationGuard)]
    named, literal = plain("host1.distinct.test"), plain("127.0.0.1")
    for flow in (named, literal):
        flow.server_conn.timestamp_start = None  # not connected yet: the request headers are all there is
    asyncio.run(guard.requestheaders(named))
    assert looked_up == [] and named.response is None
    asyncio.run(guard.requestheaders(literal))
    assert literal.response is not None and literal.response.status_code == 403
    assert literal.response.headers["X-Tlsgate-Check"] == "destination"
