"""Cleartext beyond HTTP: the `cleartext` section's two spellings, the stream verdict, and the gate in front of TCPLayer.

The gate is driven the way mitmproxy's server drives a layer: events in,
commands out, each hook answered with its completion. What is asserted is the
commands it yields, that is, exactly what mitmproxy would send or close.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from mitmproxy import connection
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.addons.tlsconfig import TlsConfig
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.test import taddons, tflow

from tests.plainpeers import SMTP_BANNER, SMTP_EHLO_REPLY, mqtt_connect_packet
from tlsgate.addons import make_addons
from tlsgate.addons.cleartext import MAX_LOOKS, CleartextGuard, Refuse, StreamGate
from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.metrics import MetricsExporter
from tlsgate.addons.policy import PolicyStore
from tlsgate.checks.cleartext import CleartextRequest, judge_cleartext, judge_stream, refusal
from tlsgate.checks.model import Severity
from tlsgate.policy import Cleartext, PolicyError, load_texts
from tlsgate.policy.loader import display_path
from tlsgate.policy.schema import build_schema
from tlsgate.policy.sections.cleartext import CleartextRules, cleartext_for
from tlsgate.sinks.findings import Finding
from tlsgate.sinks.metrics import Metrics
from tlsgate.tls.plaintext import classify

# -- the section ------------------------------------------------------------------------------------


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_texts([("p.yaml", text)])
    return [str(m) for m in caught.value.messages]


def test_scalar_spelling_keeps_meaning_every_protocol() -> None:
    policy = load_texts([("p.yaml", "defaults:\n  cleartext: allow\nrules:\n  - hosts: x.test\n    cleartext: block\n")])
    assert policy.defaults.get("cleartext") is Cleartext.ALLOW
    value = policy.match("x.test").settings.get("cleartext")
    assert value is Cleartext.BLOCK and {cleartext_for(value, p) for p in ("http", "mqtt", "unknown")} == {Cleartext.BLOCK}
    assert cleartext_for(None, "mqtt") is Cleartext.BLOCK


def test_mapping_spelling_with_default_and_without() -> None:
    policy = load_texts(
        [
            (
                "p.yaml",
                "defaults:\n  cleartext: {default: allow, mqtt: block}\nrules:\n  - hosts: x.test\n    cleartext: {mqtt: allow}\n",
            )
        ]
    )
    defaults = policy.defaults.get("cleartext")
    assert defaults == CleartextRules(Cleartext.ALLOW, {"mqtt": Cleartext.BLOCK})
    assert cleartext_for(defaults, "smtp") is Cleartext.ALLOW and cleartext_for(defaults, "mqtt") is Cleartext.BLOCK
    rule = policy.match("x.test").settings.get("cleartext")
    assert cleartext_for(rule, "mqtt") is Cleartext.ALLOW
    assert cleartext_for(rule, "http") is Cleartext.BLOCK and cleartext_for(rule, "unknown") is Cleartext.BLOCK  # default omitted
    assert str(defaults) == "allow (mqtt block)"


def test_mapping_errors_name_file_line_and_column() -> None:
    found = errors("defaults:\n  cleartext:\n    mqtt: allow\n    mqqt: block\n    smtp: report\n")
    assert any(
        m.startswith("p.yaml:4:5") and "unknown key 'mqqt' in defaults.cleartext" in m and "did you mean 'mqtt'" in m
        for m in found
    ), found
    assert any(
        m.startswith("p.yaml:5:11") and "defaults.cleartext.smtp must be block or allow" in m and "mode: report" in m
        for m in found
    )
    assert any(m.startswith("p.yaml:2:14") and "block" in m for m in errors("defaults:\n  cleartext: maybe\n"))
    assert any("at least one protocol" in m for m in errors("defaults:\n  cleartext: {}\n"))
    assert any("must be one of" in m for m in errors("defaults:\n  cleartext: [block]\n"))


def test_schema_accepts_both_spellings_and_rejects_unknown_protocols() -> None:
    schema = build_schema()
    for text in ("cleartext: block", "cleartext: {default: block, mqtt: allow, unknown: allow, http: block}"):
        jsonschema.validate(yaml.safe_load(f"version: 1\ndefaults:\n  {text}\n"), schema)
    for text in ("cleartext: {mqqt: allow}", "cleartext: {mqtt: report}", "cleartext: {}"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(yaml.safe_load(f"version: 1\ndefaults:\n  {text}\n"), schema)


# -- the verdict ----------------------------------------------------------------------------------------

POLICY = """\
version: 1
defaults:
  mode: enforce
  cleartext: {default: block, mqtt: allow}
devices:
  127.0.0.1: pixel-7
rules:
  - hosts: [report.test]
    mode: report
    cleartext: block
  - hosts: [web.test]
    cleartext: allow
"""


def test_judge_stream_by_protocol_severity_and_remedy() -> None:
    policy = load_texts([("p.yaml", POLICY)])
    mqtt = classify(mqtt_connect_packet("c", "u", "p"))
    assert judge_stream(mqtt, policy.match("any.test"), 1883) is None  # mqtt: allow in the defaults
    smtp = classify(b"EHLO x\r\nAUTH PLAIN AHUAcA==\r\n", SMTP_BANNER + SMTP_EHLO_REPLY)
    issue = judge_stream(smtp, policy.match("any.test"), 25)
    assert issue is not None and issue.kind == "plain_smtp" and issue.severity is Severity.HIGH
    assert "any.test:25" in issue.detail and "STARTTLS" in issue.detail and "STARTTLS" in issue.remedy
    assert "add a rule with hosts: [any.test]" in issue.remedy and "smtp: allow" in issue.remedy
    unknown = judge_stream(classify(b"\x00binary"), policy.match("report.test"), 9)
    assert unknown is not None and unknown.severity is Severity.MEDIUM
    assert "cleartext: {default: block, unknown: allow}" in unknown.remedy and "p.yaml:8" in unknown.remedy
    assert judge_stream(classify(b"\x00binary"), policy.match("web.test"), 9) is None  # scalar allow: every protocol
    upgraded = classify(b"EHLO x\r\nSTARTTLS\r\n\x16\x03\x01\x00\x01", SMTP_BANNER)
    assert judge_stream(upgraded, policy.match("any.test"), 25) is None


def request() -> CleartextRequest:
    return CleartextRequest("GET", False, "http://a.test/")


def test_http_requests_follow_the_http_key() -> None:
    policy = load_texts([("p.yaml", "defaults:\n  cleartext: {default: allow, http: block}\n")])
    assert judge_cleartext(request(), policy.match("a.test")) is not None
    policy = load_texts([("p.yaml", "defaults:\n  cleartext: {http: allow}\n")])
    assert judge_cleartext(request(), policy.match("a.test")) is None


# -- the gate ------------------------------------------------------------------------------------------


class Rig:
    def __init__(self, tctx: taddons.context, guard: CleartextGuard, findings: Path, exporter: MetricsExporter) -> None:
        self.tctx, self.guard, self.findings_path, self.exporter = tctx, guard, findings, exporter

    def rule(self) -> str:
        return f"{display_path(self.findings_path.parent / 'policy.yaml')}:2"

    def findings(self) -> list[dict[str, Any]]:
        if not self.findings_path.exists():
            return []
        return [json.loads(line) for line in self.findings_path.read_text().splitlines()]

    def stream(self, host: str, port: int, chosen: str = "tcp", first: bytes = b"") -> tuple[Context, layer.NextLayer]:
        client = tflow.tclient_conn()
        server = connection.Server(address=(host, port))
        server.timestamp_start, server.state = 1.0, connection.ConnectionState.OPEN  # eager: connected before any byte
        context = Context(client, self.tctx.options)
        context.server = server
        nextlayer = layer.NextLayer(context)
        if first:
            nextlayer.events.append(events.DataReceived(client, first))
        nextlayer.layer = layers.TCPLayer(context) if chosen == "tcp" else layers.HttpLayer(context, HTTPMode.transparent)
        self.guard.next_layer(nextlayer)
        return context, nextlayer


def run(gate: layer.Layer, *incoming: events.Event) -> list[commands.Command]:
    """Feed events, answering every hook at once the way mitmproxy does after running the add-ons."""
    out: list[commands.Command] = []
    queue = list(incoming)
    for _ in range(100):
        if not queue:
            break
        for command in gate.handle_event(queue.pop(0)):
            out.append(command)
            if isinstance(command, commands.StartHook):
                queue.append(events.HookCompleted(command))
    return out


def sent_to(out: list[commands.Command], conn: connection.Connection) -> bytes:
    return b"".join(c.data for c in out if isinstance(c, commands.SendData) and c.connection is conn)


def closed(out: list[commands.Command]) -> list[connection.Connection]:
    return [c.connection for c in out if isinstance(c, commands.CloseConnection)]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    addons = make_addons()
    (tmp_path / "policy.yaml").write_text(POLICY)
    findings = tmp_path / "findings.jsonl"
    tlsconfig = TlsConfig()
    with taddons.context(Proxyserver(), tlsconfig, *addons) as tctx:  # proxyserver owns connection_strategy
        tctx.configure(tlsconfig, confdir=str(tmp_path / "certs"), connection_strategy="eager")
        (store,) = [a for a in addons if isinstance(a, PolicyStore)]
        (sink,) = [a for a in addons if isinstance(a, FindingsSink)]
        tctx.configure(store, tlsgate_policy=[str(tmp_path / "policy.yaml")])
        tctx.configure(sink, tlsgate_findings=str(findings))
        (guard,) = [a for a in addons if isinstance(a, CleartextGuard)]
        (exporter,) = [a for a in addons if isinstance(a, MetricsExporter)]
        try:
            yield Rig(tctx, guard, findings, exporter)
        finally:
            sink.done()


def test_blocked_stream_forwards_nothing_closes_both_sides_and_records_once(rig: Rig) -> None:
    context, nextlayer = rig.stream("redis.test", 6379)
    gate = nextlayer.layer
    assert isinstance(gate, StreamGate)
    assert [type(x).__name__ for x in context.layers] == ["StreamGate", "TCPLayer"]
    login = b"*3\r\n$4\r\nAUTH\r\n$3\r\nbob\r\n$6\r\nSECRET\r\n"
    out = run(gate, events.Start(), events.DataReceived(context.client, login[:5]))
    assert sent_to(out, context.server) == b"" and closed(out) == []  # not known yet: held, not forwarded
    out = run(gate, events.DataReceived(context.client, login[5:]))
    assert sent_to(out, context.server) == b"" and closed(out) == [context.client, context.server]
    assert sent_to(out, context.client) == f"-ERR tlsgate blocked cleartext redis (rule {rig.rule()})\r\n".encode()
    assert run(gate, events.DataReceived(context.client, b"*1\r\n$4\r\nPING\r\n")) == []  # after the block: nothing
    (finding,) = rig.findings()
    assert finding["action"] == "blocked" and finding["host"] == "redis.test" and finding["port"] == 6379
    assert finding["evidence"]["credentials"] == ["password", "username"] and finding["evidence"]["client_bytes"] == len(login)
    assert finding["device"] == "pixel-7" and "SECRET" not in json.dumps(finding)
    assert (
        rig.exporter.metrics.registry.get_sample_value("tlsgate_cleartext_total", {"protocol": "redis", "action": "blocked"}) == 1
    )


def test_allowed_protocol_passes_everything_and_records_nothing(rig: Rig) -> None:
    context, nextlayer = rig.stream("broker.test", 1883)
    packet = mqtt_connect_packet("c", "u", "p")
    out = run(nextlayer.layer, events.Start(), events.DataReceived(context.client, packet[:3]))
    assert sent_to(out, context.server) == b""  # a CONNECT's first bytes: held until the flags byte is in
    out = run(nextlayer.layer, events.DataReceived(context.client, packet[3:]))
    assert sent_to(out, context.server) == packet and closed(out) == []  # then all of it, once, in order
    out = run(nextlayer.layer, events.DataReceived(context.server, b"\x20\x02\x00\x00"))
    assert sent_to(out, context.client) == b"\x20\x02\x00\x00"
    assert rig.findings() == []


def test_server_first_banner_passes_ehlo_passes_auth_is_blocked(rig: Rig) -> None:
    context, nextlayer = rig.stream("mail.test", 25)
    gate = nextlayer.layer
    out = run(gate, events.Start(), events.DataReceived(context.server, SMTP_BANNER))
    assert sent_to(out, context.client) == SMTP_BANNER
    out = run(gate, events.DataReceived(context.client, b"EHLO me\r\n"))
    assert sent_to(out, context.server) == b"EHLO me\r\n"
    run(gate, events.DataReceived(context.server, SMTP_EHLO_REPLY))
    out = run(gate, events.DataReceived(context.client, b"AUTH PLAIN AHUAcA==\r\n"))
    assert sent_to(out, context.server) == b"" and context.client in closed(out)
    (finding,) = rig.findings()
    assert finding["evidence"]["protocol"] == "smtp" and finding["evidence"]["starttls_offered_unused"] is True


def client_hello(name: str = "mail.test") -> bytes:
    """A real ClientHello, as an app's TLS stack sends it right after the server accepted STARTTLS."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def run_addons(rig: Rig, gate: layer.Layer, *incoming: events.Event) -> list[commands.Command]:
    """Like `run`, but the TLS hooks run tlsgate's and tlsconfig's add-ons first, as mitmproxy would.

    (tcp_message would wake the run-lifetime add-on, which needs mitmproxy's running event loop.)
    """
    out: list[commands.Command] = []
    queue = list(incoming)
    for _ in range(100):
        if not queue:
            break
        for command in gate.handle_event(queue.pop(0)):
            out.append(command)
            if isinstance(command, commands.StartHook):
                if type(command).__name__.startswith("Tls"):
                    rig.tctx.master.addons.trigger(command)
                queue.append(events.HookCompleted(command))
    return out


def upgrade_to_tls(rig: Rig, host: str = "mail.test") -> tuple[Context, StreamGate]:
    """An SMTP session up to the server's 220 for STARTTLS: banner, EHLO and STARTTLS passed in the clear."""
    context, nextlayer = rig.stream(host, 587)
    gate = nextlayer.layer
    assert isinstance(gate, StreamGate)
    run(gate, events.Start(), events.DataReceived(context.server, SMTP_BANNER))
    run(gate, events.DataReceived(context.client, b"EHLO me\r\n"), events.DataReceived(context.server, SMTP_EHLO_REPLY))
    out = run(gate, events.DataReceived(context.client, b"STARTTLS\r\n"))
    assert sent_to(out, context.server) == b"STARTTLS\r\n"
    out = run(gate, events.DataReceived(context.server, b"220 2.0.0 go ahead\r\n"))
    assert sent_to(out, context.client) == b"220 2.0.0 go ahead\r\n"
    return context, gate


def test_starttls_hands_the_stream_to_tls_layers_and_the_server_handshake_comes_first(rig: Rig) -> None:
    context, gate = upgrade_to_tls(rig)
    hello = client_hello()
    out = run_addons(rig, gate, events.DataReceived(context.client, hello))
    assert gate.upgraded and not gate.looking
    assert [type(x).__name__ for x in context.layers] == ["StreamGate", "ServerTLSLayer", "ClientTLSLayer"]
    to_server = sent_to(out, context.server)
    # not the app's hello relayed blind: tlsgate's own hello, for the name the connection settled on
    assert to_server[:1] == b"\x16" and hello not in to_server and context.server.sni == "mail.test"
    assert context.client.sni == "mail.test" and context.server.tls and context.client.tls
    assert sent_to(out, context.client) == b""  # the app's handshake waits for the upstream verdict
    hooks = [type(c).__name__ for c in out if isinstance(c, commands.StartHook)]
    assert hooks.index("TlsClienthelloHook") < hooks.index("TlsStartServerHook") and "TlsStartClientHook" not in hooks
    assert "TcpEndHook" in hooks  # the cleartext part of the stream ends as mitmproxy would end it
    state = rig.guard.connections.peek(context.client)
    assert state is not None and context.server.id in state.servers  # UpstreamTls is judging this handshake
    assert rig.findings() == []


def test_starttls_line_and_hello_in_one_chunk_are_split_at_the_handshake(rig: Rig) -> None:
    context, nextlayer = rig.stream("mail.test", 25)
    gate = nextlayer.layer
    assert isinstance(gate, StreamGate)
    run(gate, events.Start(), events.DataReceived(context.server, SMTP_BANNER + SMTP_EHLO_REPLY + b"220 go\r\n"))
    hello = client_hello()
    out = run_addons(rig, gate, events.DataReceived(context.client, b"EHLO me\r\nSTARTTLS\r\n" + hello))
    to_server = sent_to(out, context.server)
    assert to_server.startswith(b"EHLO me\r\nSTARTTLS\r\n\x16") and hello not in to_server
    assert gate.upgraded and rig.findings() == []


def test_a_refused_upstream_inside_starttls_gets_the_protocols_no_and_a_close(rig: Rig) -> None:
    context, gate = upgrade_to_tls(rig)
    run_addons(rig, gate, events.DataReceived(context.client, client_hello()))
    state = rig.guard.connections.peek(context.client)
    assert state is not None
    refused = Finding("pin", "blocked", "high", "mail.test", 587, None, "p.yaml:9", "pin mismatch")
    state.servers[context.server.id].blocked = refused
    inner = layer.NextLayer(context)
    inner.layer = layers.HttpLayer(context, HTTPMode.transparent)  # what mitmproxy makes of `EHLO me` over TLS
    rig.guard.next_layer(inner)
    assert isinstance(inner.layer, Refuse)
    out = run(inner.layer, events.Start())
    assert sent_to(out, context.client) == b"421 4.7.0 tlsgate refused the server after STARTTLS: pin (rule p.yaml:9)\r\n"
    assert context.client in closed(out) and sent_to(out, context.server) == b""


def test_a_passed_upstream_inside_starttls_is_relayed_as_the_protocol_not_http(rig: Rig) -> None:
    context, gate = upgrade_to_tls(rig)
    run_addons(rig, gate, events.DataReceived(context.client, client_hello()))
    context.server.timestamp_tls_setup = 2.0  # the upstream handshake completed and UpstreamTls raised nothing
    inner = layer.NextLayer(context)
    inner.layer = layers.HttpLayer(context, HTTPMode.transparent)
    rig.guard.next_layer(inner)
    assert isinstance(inner.layer, layers.TCPLayer) and not any(isinstance(x, layers.HttpLayer) for x in context.layers)
    context.server.timestamp_tls_setup = None  # no upstream TLS (failed, or never tried): nothing is relayed
    inner = layer.NextLayer(context)
    inner.layer = layers.TCPLayer(context)
    rig.guard.next_layer(inner)
    assert isinstance(inner.layer, Refuse)


def test_starttls_acceptance_and_handshake_offset_for_every_upgrading_protocol() -> None:
    hello = b"\x16\x03\x01\x00\x05hello"
    cases = [
        (b"EHLO x\r\nSTARTTLS\r\n", SMTP_BANNER + SMTP_EHLO_REPLY + b"220 go\r\n", "smtp", True),
        (b"EHLO x\r\nSTARTTLS\r\n", SMTP_BANNER + SMTP_EHLO_REPLY + b"454 4.7.0 no\r\n", "smtp", False),
        (b"STARTTLS\r\n", SMTP_BANNER, "smtp", False),  # the banner is a 220 too, but no answer to STARTTLS
        (b"a CAPABILITY\r\nb STARTTLS\r\n", b"* OK [CAPABILITY STARTTLS] hi\r\na OK done\r\nb OK go\r\n", "imap", True),
        (b"b STARTTLS\r\n", b"* OK hi\r\nb NO not now\r\n", "imap", False),
        (b"CAPA\r\nSTLS\r\n", b"+OK hi\r\n+OK\r\nSTLS\r\n.\r\n+OK go\r\n", "pop3", True),
        (b"STLS\r\n", b"+OK hi\r\n-ERR no\r\n", "pop3", False),
        (b"AUTH TLS\r\n", b"220 FTP hi\r\n234 go\r\n", "ftp", True),
        (
            b"<stream:stream to='x'><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
            b"<stream:stream><proceed/>",
            "xmpp",
            True,
        ),
        (
            b"<stream:stream to='x'><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
            b"<stream:stream><failure/>",
            "xmpp",
            False,
        ),
    ]
    for before, server, protocol, accepted in cases:
        sighting = classify(before + hello, server)
        assert sighting.protocol == protocol and sighting.upgraded, (protocol, sighting)
        assert sighting.tls_offset == len(before) and sighting.starttls_accepted is accepted, (protocol, sighting)
    assert classify(b"EHLO x\r\nSTARTTLS\r\n", SMTP_BANNER + b"220 go\r\n").tls_offset is None  # no handshake yet


def test_report_mode_forwards_and_records_once_when_the_login_settles(rig: Rig) -> None:
    context, nextlayer = rig.stream("report.test", 143)
    gate = nextlayer.layer
    banner = b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n"
    run(gate, events.Start(), events.DataReceived(context.server, banner))
    out = run(gate, events.DataReceived(context.client, b"a1 CAPABILITY\r\n"))
    assert sent_to(out, context.server) == b"a1 CAPABILITY\r\n" and rig.findings() == []
    out = run(gate, events.DataReceived(context.client, b"a2 LOGIN bob SECRET\r\n"))
    assert sent_to(out, context.server) == b"a2 LOGIN bob SECRET\r\n"
    run(gate, events.DataReceived(context.client, b"a3 SELECT INBOX\r\n"), events.ConnectionClosed(context.client))
    (finding,) = rig.findings()
    assert finding["action"] == "reported" and finding["rule"].endswith("policy.yaml:8")
    assert finding["evidence"]["credentials"] == ["password", "username"] and finding["evidence"]["starttls_offered_unused"]


def test_report_without_credentials_is_recorded_when_the_client_closes(rig: Rig) -> None:
    context, nextlayer = rig.stream("report.test", 25)
    gate = nextlayer.layer
    run(gate, events.Start(), events.DataReceived(context.server, SMTP_BANNER))
    run(gate, events.DataReceived(context.client, b"EHLO me\r\n"))
    assert rig.findings() == []
    out = run(gate, events.ConnectionClosed(context.client))
    assert any(isinstance(c, commands.CloseTcpConnection | commands.CloseConnection) for c in out)
    (finding,) = rig.findings()
    assert finding["action"] == "reported" and finding["evidence"]["protocol"] == "smtp"


def test_bytes_held_when_the_client_closes_are_judged(rig: Rig) -> None:
    context, nextlayer = rig.stream("x.test", 1)
    out = run(nextlayer.layer, events.Start(), events.DataReceived(context.client, b"<?xm"))
    assert sent_to(out, context.server) == b""
    out = run(nextlayer.layer, events.ConnectionClosed(context.client))
    assert sent_to(out, context.server) == b"" and context.client in closed(out)
    assert rig.findings()[0]["evidence"]["protocol"] == "unknown"


def test_inline_redis_that_mitmproxy_takes_for_http_is_relayed_and_judged(rig: Rig) -> None:
    context, nextlayer = rig.stream("redis.test", 6379, chosen="http", first=b"AUTH SECRET\r\n")
    assert isinstance(nextlayer.layer, StreamGate) and not any(isinstance(x, layers.HttpLayer) for x in context.layers)
    context, nextlayer = rig.stream("web.test", 80, chosen="http", first=b"GET / HTTP/1.1\r\n")
    assert isinstance(nextlayer.layer, layers.HttpLayer)  # real HTTP stays with the request hook


def test_tls_streams_and_tls_clients_are_not_gated(rig: Rig) -> None:
    _, nextlayer = rig.stream("x.test", 443, first=b"\x16\x03\x01\x00\x05hello")
    assert isinstance(nextlayer.layer, layers.TCPLayer)
    client = tflow.tclient_conn()
    client.tls = True
    context = Context(client, rig.tctx.options)
    context.server = connection.Server(address=("x.test", 5223))
    inner = layer.NextLayer(context)
    inner.layer = layers.TCPLayer(context)
    rig.guard.next_layer(inner)
    assert isinstance(inner.layer, layers.TCPLayer)


def test_a_verdict_that_raises_blocks(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    import tlsgate.addons.cleartext as module

    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(module, "judge_stream", broken)
    context, nextlayer = rig.stream("x.test", 1)
    out = run(nextlayer.layer, events.Start(), events.DataReceived(context.client, b"\x00binary"))
    assert sent_to(out, context.server) == b"" and context.client in closed(out)


def test_a_client_dribbling_bytes_is_judged_after_a_bounded_number_of_looks(rig: Rig) -> None:
    context, nextlayer = rig.stream("report.test", 25)
    gate = nextlayer.layer
    assert isinstance(gate, StreamGate)
    run(gate, events.Start(), events.DataReceived(context.server, SMTP_BANNER))
    dribble = b"EHLO me\r\n" * 20
    for index, byte in enumerate(dribble[: MAX_LOOKS - 1]):
        run(gate, events.DataReceived(context.client, bytes([byte])))
        assert gate.looking, index
    assert rig.findings() == []
    run(gate, events.DataReceived(context.client, dribble[MAX_LOOKS - 1 : MAX_LOOKS]))
    assert not gate.looking
    (finding,) = rig.findings()
    assert finding["action"] == "reported" and finding["evidence"]["client_bytes"] == MAX_LOOKS


def test_refusals_speak_the_protocol_and_carry_no_control_characters() -> None:
    mqtt = classify(mqtt_connect_packet("c", "u", "p"))
    assert refusal(mqtt, "p.yaml:2") == b"\x20\x02\x00\x05"  # 3.1.1 CONNACK: not authorized
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01c"
    assert refusal(classify(b"\x10" + bytes([len(body)]) + body), "p.yaml:2") == b"\x20\x03\x00\x87\x00"  # MQTT 5
    smtp = classify(b"EHLO x\r\nAUTH PLAIN AHUAcA==\r\n", SMTP_BANNER)
    assert refusal(smtp, "evil\r\nRCPT TO:<x>:3") == b"421 4.7.0 tlsgate blocked cleartext smtp (rule evil??RCPT TO:<x>:3)\r\n"
    assert refusal(classify(b"\x00binary"), "p.yaml:2") == b""  # nothing an unknown client would understand


def test_cleartext_metric_keeps_a_fixed_protocol_vocabulary() -> None:
    metrics = Metrics()

    def seen(protocol: object) -> None:
        metrics.on_finding(Finding("cleartext", "blocked", "high", "h.test", 1, None, "p:1", "", evidence={"protocol": protocol}))

    for protocol in ("ws", "http", "mqtt", "x" * 500, None):
        seen(protocol)
    labels = {s.labels["protocol"]: s.value for s in metrics.cleartext.collect()[0].samples if s.name.endswith("_total")}
    assert labels == {"http": 2, "mqtt": 1, "unknown": 2}


@pytest.mark.parametrize(
    ("port", "banner", "command", "accept"),
    [
        (25, SMTP_BANNER, b"EHLO me\r\nSTARTTLS\r\n", b"220 2.0.0 go\r\n"),
        (143, b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n", b"a1 STARTTLS\r\n", b"a1 OK begin TLS\r\n"),
        (110, b"+OK POP3 ready\r\n", b"STLS\r\n", b"+OK begin TLS\r\n"),
        (21, b"220 FTP ready\r\n", b"AUTH TLS\r\n", b"234 go\r\n"),
        (5222, b"", b"<stream:stream to='chat.test'><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", b"<proceed/>"),
    ],
)
def test_every_upgrading_protocol_is_handed_to_the_tls_layers(
    rig: Rig, port: int, banner: bytes, command: bytes, accept: bytes
) -> None:
    context, nextlayer = rig.stream("chat.test", port)
    gate = nextlayer.layer
    assert isinstance(gate, StreamGate)
    run(gate, events.Start(), *([events.DataReceived(context.server, banner)] if banner else []))
    out = run(gate, events.DataReceived(context.client, command))
    assert sent_to(out, context.server) == command  # negotiation and the upgrade command pass in the clear
    run(gate, events.DataReceived(context.server, accept))
    hello = client_hello("chat.test")
    out = run_addons(rig, gate, events.DataReceived(context.client, hello))
    assert gate.upgraded and hello not in sent_to(out, context.server) and sent_to(out, context.server)[:1] == b"\x16"
    assert gate.inspector.sighting is not None and gate.inspector.sighting.starttls_accepted
    assert rig.findings() == []


def test_a_failure_while_switching_to_tls_closes_the_stream(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    context, gate = upgrade_to_tls(rig)

    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(layers, "ServerTLSLayer", broken)
    out = run(gate, events.DataReceived(context.client, client_hello()))
    assert sent_to(out, context.server) == b"" and closed(out) == [context.client, context.server]
    assert not gate.upgraded


def test_a_handshake_arriving_byte_by_byte_after_starttls_is_held_not_leaked(rig: Rig) -> None:
    context, gate = upgrade_to_tls(rig)
    hello = client_hello()
    out = run(gate, events.DataReceived(context.client, hello[:1]), events.DataReceived(context.client, hello[1:2]))
    assert sent_to(out, context.server) == b"" and gate.looking  # could still be TLS: not one byte goes out in the clear
    out = run_addons(rig, gate, events.DataReceived(context.client, hello[2:]))
    assert gate.upgraded and hello not in sent_to(out, context.server) and context.client.sni == "mail.test"


def test_a_refused_starttls_followed_by_auth_in_the_clear_is_blocked(rig: Rig) -> None:
    context, nextlayer = rig.stream("mail.test", 25)
    gate = nextlayer.layer
    assert isinstance(gate, StreamGate)
    run(gate, events.Start(), events.DataReceived(context.server, SMTP_BANNER + SMTP_EHLO_REPLY))
    run(gate, events.DataReceived(context.client, b"EHLO me\r\nSTARTTLS\r\n"))
    run(gate, events.DataReceived(context.server, b"454 4.7.0 TLS not available\r\n"))
    out = run(gate, events.DataReceived(context.client, b"AUTH PLAIN AHUAcA==\r\n"))
    assert sent_to(out, context.server) == b"" and context.client in closed(out) and not gate.upgraded
    (finding,) = rig.findings()
    assert finding["evidence"]["kind"] == "plain_smtp" and finding["action"] == "blocked"


def test_starttls_after_the_stream_was_passed_is_still_handed_to_the_tls_layers(rig: Rig) -> None:
    """Report mode records a settled login and passes the stream; a STARTTLS after that is still intercepted."""
    context, nextlayer = rig.stream("report.test", 25)
    gate = nextlayer.layer
    assert isinstance(gate, StreamGate)
    run(gate, events.Start(), events.DataReceived(context.server, SMTP_BANNER + SMTP_EHLO_REPLY))
    out = run(gate, events.DataReceived(context.client, b"EHLO me\r\nMAIL FROM:<a@b.test>\r\n" + b"NOOP\r\n" * 40))
    assert not gate.looking and gate.watching and len(rig.findings()) == 1  # reported (plain_smtp) and passed
    run(gate, events.DataReceived(context.client, b"STARTTLS\r\n"), events.DataReceived(context.server, b"220 go\r\n"))
    hello = client_hello()
    out = run_addons(rig, gate, events.DataReceived(context.client, hello))
    assert gate.upgraded and hello not in sent_to(out, context.server) and sent_to(out, context.server)[:1] == b"\x16"
    assert [type(x).__name__ for x in context.layers] == ["StreamGate", "ServerTLSLayer", "ClientTLSLayer"]
